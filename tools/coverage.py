"""The coverage table: which of Twilio's Notify v1 operations we serve, and which tests exercise
each one.

    python tools/coverage.py           rewrite docs/coverage.md
    python tools/coverage.py --check   exit 1 if docs/coverage.md is not what this would write

Implemented: an operation of Twilio's OpenAPI description (docs/reference/twilio_notify_v1.yaml)
is implemented when the app built by notify_server.app.create_app has a route with the same
method and the same path once parameter names are ignored ({ServiceSid} and {service_sid} are
one segment). Routes that match no Twilio operation are our extensions, named after their
endpoint function (prometheus_metrics -> PrometheusMetrics).

Tests: read from the test sources (ast, nothing imported or run). A test class exercises an
operation when
  - its name is Test<Operation>, optionally followed by a plural "s" and/or a capitalised
    qualifier: TestCreateBinding, TestCreateBindingUpsert, TestListBindings and
    TestListBindingsFilters all exercise CreateBinding or ListBinding (our style: one test
    class per operation), or
  - it declares `exercises = ("CreateService", "ListBinding", ...)`, for a class that drives
    several operations (an SDK round trip). An unknown name there is an error, so the
    declaration cannot go stale silently.
The name is the contract, as with a marker: a class named after an operation is expected to
call it. Matching on class names rather than on path strings keeps working when a test builds
its paths with helpers or goes through an SDK that never spells a path.
"""

import argparse
import ast
import difflib
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "docs" / "reference" / "twilio_notify_v1.yaml"
OUTPUT = ROOT / "docs" / "coverage.md"
CONSOLE = "/console"
TESTS = ROOT / "tests"
METHOD_ORDER = ("GET", "POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class Operation:
    name: str
    method: str
    path: str

    @property
    def shape(self) -> tuple[str, str]:
        return (self.method, path_shape(self.path))

    @property
    def sort_key(self) -> tuple[tuple[str, ...], int]:
        # A collection, then its instance, then what nests under it: Services before Bindings.
        segments = tuple("" if s == "{}" else s for s in path_shape(self.path).split("/"))
        return (segments, METHOD_ORDER.index(self.method))


def path_shape(path: str) -> str:
    """The path with every parameter anonymous: /v1/Services/{ServiceSid} -> /v1/Services/{}."""
    return re.sub(r"\{[^}/]*\}", "{}", path)


def spec_operations(spec: dict) -> list[Operation]:
    found = []
    for path, item in spec["paths"].items():
        for method in METHOD_ORDER:
            operation = item.get(method.lower())
            if operation is not None:
                found.append(Operation(operation["operationId"], method, path))
    return sorted(found, key=lambda op: op.sort_key)


def _walk(routes: Iterable) -> Iterator:
    # FastAPI 0.165 keeps each included router as one wrapper route around the original.
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _walk(inner.routes)
        else:
            yield route


def served_operations(app) -> list[Operation]:
    from starlette.routing import Route

    found = []
    for route in _walk(app.routes):
        # The web inspector's HTML pages and forms are not API (see the note in build()).
        if isinstance(route, Route) and not route.path.startswith(CONSOLE):
            name = "".join(part.capitalize() for part in route.name.split("_"))
            # Starlette adds HEAD to every GET route; Twilio's spec has none.
            found.extend(
                Operation(name, method, route.path) for method in route.methods if method != "HEAD"
            )
    return sorted(found, key=lambda op: op.sort_key)


def app_operations() -> list[Operation]:
    """The routes of the real app, built with settings that serve every optional route."""
    from cryptography.fernet import Fernet

    from notify_server.app import create_app
    from notify_server.config import Settings

    # Explicit values win over NOTIFY_* variables, so the environment cannot change the table.
    # Nothing connects: the lifespan (and so the delivery worker) never runs.
    settings = Settings(
        database_url="sqlite://",
        secret_key=Fernet.generate_key().decode(),
        metrics_enabled=True,
        console_enabled=True,
        worker_enabled=False,
    )
    app = create_app(settings)
    try:
        return served_operations(app)
    finally:
        app.state.engine.dispose()


def exercised_by(tests_dir: Path, names: Iterable[str]) -> dict[str, list[str]]:
    """For each operation name, the test classes ("file.py::TestClass") that exercise it."""
    known = sorted(set(names))
    by_name: dict[str, list[str]] = {name: [] for name in known}
    conventions = {name: re.compile(rf"Test{re.escape(name)}s?(?:[A-Z]\w*)?") for name in known}
    for file in _test_modules(tests_dir):
        relative = file.relative_to(tests_dir).as_posix()
        tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
        for node in _classes(tree.body):
            if not node.name.startswith("Test"):
                continue
            where = f"{relative}::{node.name}"
            hits = {name for name, rule in conventions.items() if rule.fullmatch(node.name)}
            for declared in _declared_exercises(node):
                if declared not in by_name:
                    raise ValueError(f"{where} exercises unknown operation {declared!r}")
                hits.add(declared)
            for name in hits:
                by_name[name].append(where)
    return by_name


def _classes(body: list[ast.stmt]) -> Iterator[ast.ClassDef]:
    """Classes at module level and nested in classes: the ones pytest collects."""
    for statement in body:
        if isinstance(statement, ast.ClassDef):
            yield statement
            yield from _classes(statement.body)


def _test_modules(tests_dir: Path) -> list[Path]:
    found = []
    for folder, subfolders, files in os.walk(tests_dir):
        # tests/node/node_modules holds thousands of folders and no Python tests.
        subfolders[:] = [name for name in subfolders if name != "node_modules"]
        found.extend(Path(folder, name) for name in files if re.fullmatch(r"test_\w*\.py", name))
    return sorted(found)


def _declared_exercises(node: ast.ClassDef) -> list[str]:
    for statement in node.body:
        if (
            isinstance(statement, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "exercises" for t in statement.targets)
            and isinstance(statement.value, ast.Tuple | ast.List)
        ):
            return [
                element.value
                for element in statement.value.elts
                if isinstance(element, ast.Constant) and isinstance(element.value, str)
            ]
    return []


def _tests_cell(classes: list[str]) -> str:
    if not classes:
        return "—"
    by_file: dict[str, list[str]] = {}
    for entry in classes:
        file, cls = entry.split("::")
        by_file.setdefault(file, []).append(cls)
    return "<br>".join(
        f"`{file}`: {', '.join(sorted(names))}" for file, names in sorted(by_file.items())
    )


def render(spec: dict, served: list[Operation], tests_dir: Path) -> str:
    twilio = spec_operations(spec)
    served_shapes = {op.shape for op in served}
    twilio_shapes = {op.shape for op in twilio}
    extensions = [op for op in served if op.shape not in twilio_shapes]
    tested = exercised_by(tests_dir, [op.name for op in twilio + extensions])

    implemented = [op for op in twilio if op.shape in served_shapes]
    info = spec["info"]
    lines = [
        "# Twilio Notify v1 coverage",
        "",
        "Generated by `python tools/coverage.py`; do not edit. `python tools/coverage.py"
        " --check` (and tests/test_coverage_table.py) fail when this file is stale.",
        "",
        f"Source: Twilio's OpenAPI description of Notify v1, `{SPEC.relative_to(ROOT)}`"
        f" ({info['title']}, version {info['version']}, {info['license']['name']}), and the"
        " routes of `notify_server.app.create_app`. An operation is implemented when the app"
        " serves its method and path (parameter names aside). A test class exercises an"
        " operation when it is named `Test<Operation>` (optionally plural and/or with a"
        " qualifier: `TestListBindingsFilters`) or declares `exercises = (...)`; see the"
        " docstring of tools/coverage.py. The web inspector's pages (`/console/...`) are"
        " HTML, not API, and are not listed.",
        "",
        f"{len(implemented)} of {len(twilio)} Twilio operations implemented;"
        f" {sum(1 for op in twilio if tested[op.name])} exercised by tests."
        f" {len(extensions)} extensions.",
        "",
        "## Twilio operations",
        "",
        "| operationId | method | path | implemented | tests |",
        "| --- | --- | --- | --- | --- |",
    ]
    for op in twilio:
        done = "yes" if op.shape in served_shapes else "no"
        lines.append(
            f"| {op.name} | {op.method} | `{op.path}` | {done} | {_tests_cell(tested[op.name])} |"
        )
    lines += [
        "",
        "## Extensions",
        "",
        "Routes we serve that Twilio's description lacks.",
        "",
        "| route | method | path | tests |",
        "| --- | --- | --- | --- |",
    ]
    for op in extensions:
        lines.append(f"| {op.name} | {op.method} | `{op.path}` | {_tests_cell(tested[op.name])} |")
    return "\n".join(lines) + "\n"


def load_spec(path: Path = SPEC) -> dict:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 10x faster
    with path.open(encoding="utf-8") as file:
        return yaml.load(file, Loader=loader)


def build() -> str:
    return render(load_spec(), app_operations(), TESTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    try:
        text = build()
    except ValueError as error:  # a test declares an operation that does not exist
        print(f"tools/coverage.py: {error}", file=sys.stderr)
        return 2
    current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
    if args.check:
        if current == text:
            return 0
        diff = difflib.unified_diff(
            current.splitlines(keepends=True),
            text.splitlines(keepends=True),
            str(args.output),
            "generated",
        )
        sys.stderr.writelines(diff)
        print(f"{args.output} is stale: run python tools/coverage.py", file=sys.stderr)
        return 1
    if current != text:
        args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
