"""docs/coverage.md is what tools/coverage.py generates, and the generator's rules hold."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "coverage.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("notify_coverage_tool", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


coverage = load_tool()
Operation = coverage.Operation


def spec_with(*operations: tuple[str, str, str]) -> dict:
    paths: dict[str, dict] = {}
    for operation_id, method, path in operations:
        paths.setdefault(path, {"servers": [{"url": "https://notify.twilio.com"}]})
        paths[path][method.lower()] = {"operationId": operation_id}
    info = {"title": "Twilio - Notify", "version": "1.0.0", "license": {"name": "Apache 2.0"}}
    return {"info": info, "paths": paths}


def write_tests(tmp_path: Path, source: str) -> Path:
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "test_things.py").write_text(source)
    return tmp_path


def rows(table: str, section: str) -> dict[str, list[str]]:
    """{first cell: cells} for the table under `## section`."""
    body = table.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    found = {}
    for line in body.splitlines():
        if line.startswith("| ") and not line.startswith(("| ---", "| operationId", "| route")):
            cells = [cell.strip() for cell in line.strip("|").split(" | ")]
            found[cells[0]] = cells
    return found


@pytest.fixture(scope="module")
def table() -> str:
    return coverage.build()


class TestCoverageTableIsCurrent:
    def test_docs_coverage_md_is_what_the_generator_writes(self, table):
        current = (ROOT / "docs" / "coverage.md").read_text(encoding="utf-8")
        assert current == table, "docs/coverage.md is stale: run python tools/coverage.py"

    def test_every_twilio_operation_is_implemented_and_exercised(self, table):
        twilio = rows(table, "Twilio operations")
        assert len(twilio) == len(coverage.spec_operations(coverage.load_spec())) == 15
        assert {cells[3] for cells in twilio.values()} == {"yes"}
        assert "—" not in {cells[4] for cells in twilio.values()}

    def test_our_extensions_are_listed(self, table):
        extensions = rows(table, "Extensions")
        assert {(cells[1], cells[2]) for cells in extensions.values()} == {
            ("GET", "`/healthz`"),
            ("GET", "`/readyz`"),
            ("GET", "`/metrics`"),
            ("GET", "`/v1/Services/{service_sid}/Notifications/{sid}/Deliveries`"),
            # The notification list and one notification (issue 11).
            ("GET", "`/v1/Services/{service_sid}/Notifications`"),
            ("GET", "`/v1/Services/{service_sid}/Notifications/{sid}`"),
            # Twilio's removed Users family (issue 10), not in its current description.
            ("GET", "`/v1/Services/{service_sid}/Segments`"),
            ("GET", "`/v1/Services/{service_sid}/Users`"),
            ("POST", "`/v1/Services/{service_sid}/Users`"),
            ("GET", "`/v1/Services/{service_sid}/Users/{identity}`"),
            ("DELETE", "`/v1/Services/{service_sid}/Users/{identity}`"),
            ("GET", "`/v1/Services/{service_sid}/Users/{identity}/Bindings`"),
            ("POST", "`/v1/Services/{service_sid}/Users/{identity}/Bindings`"),
            ("GET", "`/v1/Services/{service_sid}/Users/{identity}/Bindings/{sid}`"),
            ("DELETE", "`/v1/Services/{service_sid}/Users/{identity}/Bindings/{sid}`"),
            ("POST", "`/v1/Services/{service_sid}/Users/{identity}/SegmentMemberships`"),
            # The served description and its browser (issue 11).
            ("GET", "`/`"),
            ("GET", "`/openapi`"),
            ("GET", "`/docs`"),
            ("GET", "`/docs/assets/{name}`"),
        }

    def test_the_reference_copy_keeps_twilios_header(self):
        info = coverage.load_spec()["info"]
        assert info["title"] == "Twilio - Notify"
        assert info["license"]["name"] == "Apache 2.0"


class TestCheck:
    def test_stale_file_exits_1_and_is_left_alone(self, tmp_path, capsys):
        output = tmp_path / "coverage.md"
        output.write_text(coverage.build().replace("| yes |", "| no |", 1))
        before = output.read_text()

        assert coverage.main(["--check", "--output", str(output)]) == 1

        assert output.read_text() == before
        assert "is stale: run python tools/coverage.py" in capsys.readouterr().err

    def test_missing_file_is_stale(self, tmp_path):
        assert coverage.main(["--check", "--output", str(tmp_path / "coverage.md")]) == 1

    def test_writing_then_checking_passes(self, tmp_path):
        output = tmp_path / "coverage.md"

        assert coverage.main(["--output", str(output)]) == 0
        assert output.read_text() == coverage.build()
        assert coverage.main(["--check", "--output", str(output)]) == 0

    def test_an_unknown_declared_operation_exits_2(self, tmp_path, monkeypatch, capsys):
        tests = write_tests(tmp_path, "class TestRoundtrip:\n    exercises = ('Nope',)\n")
        monkeypatch.setattr(coverage, "TESTS", tests)
        output = tmp_path / "coverage.md"

        assert coverage.main(["--output", str(output)]) == 2

        assert not output.exists()
        assert "TestRoundtrip exercises unknown operation 'Nope'" in capsys.readouterr().err

    def test_command_line_check_of_the_committed_file(self):
        # A fresh process from another directory: the script finds its own paths.
        done = subprocess.run(
            [sys.executable, str(TOOL), "--check"],
            cwd="/",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (done.returncode, done.stderr) == (0, "")


class TestImplemented:
    SPEC = spec_with(
        ("FetchBinding", "GET", "/v1/Services/{ServiceSid}/Bindings/{Sid}"),
        ("DeleteBinding", "DELETE", "/v1/Services/{ServiceSid}/Bindings/{Sid}"),
        ("ListUser", "GET", "/v1/Services/{ServiceSid}/Users"),
    )

    def test_matched_on_method_and_path_whatever_the_parameter_names(self, tmp_path):
        served = [Operation("FetchBinding", "GET", "/v1/Services/{service_sid}/Bindings/{sid}")]

        twilio = rows(coverage.render(self.SPEC, served, tmp_path), "Twilio operations")

        assert twilio["FetchBinding"][3] == "yes"
        assert twilio["DeleteBinding"][3] == "no"  # same path, other method
        assert twilio["ListUser"][3] == "no"

    def test_a_route_removed_from_the_app_is_no(self, tmp_path):
        spec = coverage.load_spec()
        served = [op for op in coverage.app_operations() if op.name != "DeleteBinding"]

        twilio = rows(coverage.render(spec, served, tmp_path), "Twilio operations")

        assert twilio["DeleteBinding"][3] == "no"
        assert [name for name, cells in twilio.items() if cells[3] == "no"] == ["DeleteBinding"]

    def test_routes_twilio_lacks_are_extensions(self, tmp_path):
        served = [
            Operation("FetchBinding", "GET", "/v1/Services/{service_sid}/Bindings/{sid}"),
            Operation("ListDeliveries", "GET", "/v1/Services/{a}/Notifications/{b}/Deliveries"),
            Operation("Healthz", "GET", "/healthz"),
        ]

        table = coverage.render(self.SPEC, served, tmp_path)

        assert sorted(rows(table, "Extensions")) == ["Healthz", "ListDeliveries"]
        assert "1 of 3 Twilio operations implemented; 0 exercised by tests. 2 extensions." in table

    def test_the_app_is_read_through_included_router_wrappers(self):
        served = {(op.method, op.path) for op in coverage.app_operations()}
        assert ("POST", "/v1/Services/{service_sid}/Bindings") in served
        assert ("GET", "/metrics") in served


class TestExercisedBy:
    NAMES = ("ListBinding", "CreateBinding", "DeleteService", "DeleteBinding", "Healthz")

    def test_named_after_the_operation(self, tmp_path):
        tests = write_tests(
            tmp_path,
            "class TestListBindings: pass\n"
            "class TestListBindingsFilters: pass\n"
            "class TestCreateBindingUpsert: pass\n"
            "class TestDeleteServiceDeletesItsBindings: pass\n"
            "class TestHealthz: pass\n",
        )

        found = coverage.exercised_by(tests, self.NAMES)

        assert found == {
            "ListBinding": [
                "api/test_things.py::TestListBindings",
                "api/test_things.py::TestListBindingsFilters",
            ],
            "CreateBinding": ["api/test_things.py::TestCreateBindingUpsert"],
            "DeleteService": ["api/test_things.py::TestDeleteServiceDeletesItsBindings"],
            "DeleteBinding": [],
            "Healthz": ["api/test_things.py::TestHealthz"],
        }

    def test_near_names_do_not_count(self, tmp_path):
        tests = write_tests(
            tmp_path,
            "class TestListBindingsy: pass\n"  # a lower-case tail is another word
            "class TestCreateBindingsss: pass\n"
            "class ListBindingTests: pass\n"  # not a pytest class
            "class TestXCreateBinding: pass\n",
        )

        found = coverage.exercised_by(tests, self.NAMES)

        assert all(classes == [] for classes in found.values())

    def test_declared_operations_count(self, tmp_path):
        tests = write_tests(
            tmp_path,
            "class TestRoundtrip:\n    exercises = ('CreateBinding', 'DeleteBinding')\n",
        )

        found = coverage.exercised_by(tests, self.NAMES)

        assert (
            found["CreateBinding"]
            == found["DeleteBinding"]
            == ["api/test_things.py::TestRoundtrip"]
        )
        assert found["ListBinding"] == []

    def test_declaring_an_unknown_operation_is_an_error(self, tmp_path):
        tests = write_tests(tmp_path, "class TestRoundtrip:\n    exercises = ('CreateBindings',)\n")

        with pytest.raises(ValueError, match="TestRoundtrip exercises unknown operation"):
            coverage.exercised_by(tests, self.NAMES)

    def test_only_test_modules_are_read(self, tmp_path):
        tests = write_tests(tmp_path, "")
        (tmp_path / "helpers.py").write_text("class TestHealthz: pass\n")

        assert coverage.exercised_by(tests, self.NAMES)["Healthz"] == []

    def test_the_table_names_files_and_classes(self, tmp_path):
        tests = write_tests(tmp_path, "class TestFetchBinding: pass\n")
        served = [Operation("FetchBinding", "GET", "/v1/Services/{service_sid}/Bindings/{sid}")]

        twilio = rows(coverage.render(TestImplemented.SPEC, served, tests), "Twilio operations")

        assert twilio["FetchBinding"][4] == "`api/test_things.py`: TestFetchBinding"
        assert twilio["ListUser"][4] == "—"
