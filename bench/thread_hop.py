"""What handing a database call to a thread costs the event loop: db.Threads against
loop.run_in_executor, 32 concurrent callers of a call that does nothing.

    .venv/bin/python bench/thread_hop.py [--calls 20000] [--repeats 5]

Prints CPU µs and wall µs per call (medians over the repeats, the two kinds alternating).
"""

import argparse
import asyncio
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from notify_server.db import READ_THREADS, Threads


def nothing() -> int:
    return 1


async def measure(kind: str, calls: int, callers: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(READ_THREADS)
    threads = Threads(READ_THREADS, "bench")
    remaining = calls

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            if kind == "run_in_executor":
                await loop.run_in_executor(executor, nothing)
            else:
                await threads.run(nothing)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    executor.shutdown()
    threads.close()
    return cpu / calls * 1e6, wall / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--callers", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    figures: dict[str, list[tuple[float, float]]] = {"run_in_executor": [], "db.Threads": []}
    for repeat in range(args.repeats):
        kinds = list(figures) if repeat % 2 == 0 else list(reversed(figures))
        for kind in kinds:
            figures[kind].append(asyncio.run(measure(kind, args.calls, args.callers)))
    print(f"{args.calls} calls, {args.callers} callers, {args.repeats} repeats (medians)")
    for kind, runs in figures.items():
        cpu = statistics.median(r[0] for r in runs)
        wall = statistics.median(r[1] for r in runs)
        print(f"{kind:16} {cpu:6.1f} µs CPU/call  {wall:6.1f} µs wall/call")


if __name__ == "__main__":
    main()
