"""Where the time goes, from a py-spy "raw" (collapsed stacks) profile.

    .venv/bin/python bench/pyspy_summary.py /tmp/profile/create.txt [--top 25]

Prints how the samples split between the route handler, the framework around it and the
event loop; self time by package; the functions with the most self time; and, inside the
route handler, the functions with the most inclusive time. All as shares of all samples.
http_bench.py --profile DIR writes such files and prints this for each.
"""

import argparse
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

# py-spy frames look like "function (path/to/file.py:123)"; the line number is dropped so
# that a function's samples add up.
_FRAME = re.compile(r"^(?P<name>.*) \((?P<path>.*?)(?::\d+)?\)$")
_AREAS = (
    "notify_server",
    "sqlalchemy",
    "pydantic",
    "pydantic_core",
    "fastapi",
    "starlette",
    "uvicorn",
    "asyncio",
    "orjson",
    "urllib",
)


def stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for frame in stack.split(";"):
            match = _FRAME.match(frame)
            frames.append(f"{match['name']} ({match['path']})" if match else frame)
        yield frames, int(count)


def area(frame: str) -> str:
    match = _FRAME.match(frame)
    path = match["path"] if match else frame
    top = path.split("/", 1)[0]
    return top if top in _AREAS else "other (stdlib, C helpers)"


def handler_index(frames: list[str]) -> int | None:
    """Where the route handler starts: notify-server's first frame in a router module."""
    for i, frame in enumerate(frames):
        match = _FRAME.match(frame)
        if match and match["path"].startswith("notify_server/") and "router" in match["path"]:
            return i
    for i, frame in enumerate(frames):
        if frame.startswith("run_endpoint_function "):
            return i + 1 if i + 1 < len(frames) else i
    return None


def summarise(path: Path, top: int = 20) -> str:
    samples = list(stacks(path))
    total = sum(n for _, n in samples) or 1
    own: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    areas: Counter[str] = Counter()
    where: Counter[str] = Counter()
    for frames, n in samples:
        own[frames[-1]] += n
        areas[area(frames[-1])] += n
        start = handler_index(frames)
        if start is not None:
            where["route handler"] += n
            for frame in set(frames[start:]):
                inside[frame] += n
        elif any("run_asgi" in frame for frame in frames):
            where["framework around it (middleware, routing, params, response send)"] += n
        else:
            where["event loop and HTTP parsing, outside the app"] += n
    lines = [f"{path.name}: {total} samples"]
    lines.append("  where:")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in where.most_common()]
    lines.append("  self time by package:")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in areas.most_common()]
    lines.append(f"  top {top} functions by self time:")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    lines.append(f"  top {top} functions inside the route handler, by inclusive time:")
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in inside.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("profiles", type=Path, nargs="+")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    for path in args.profiles:
        print(summarise(path, args.top))


if __name__ == "__main__":
    main()
