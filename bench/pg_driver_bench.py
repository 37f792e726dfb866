"""CPU per statement on PostgreSQL: through a psycopg cursor against notify_server.pgwire
(libpq through psycopg's `pq` layer, what db.Prepared uses), one statement alone and a
transaction of four in one round trip (a create's first batch: BEGIN, a lock, a lookup,
COMMIT). One connection, one thread, loopback; user and system CPU of this process, and
wall time, per operation: median of the repeats.

    .venv/bin/python bench/pg_driver_bench.py postgresql://postgres@127.0.0.1:5432/test
"""

import argparse
import resource
import statistics
import time
from collections.abc import Callable

import psycopg

from notify_server import pgwire

LOOKUP = "SELECT %(n)s::int + 1, %(s)s::varchar, now()::timestamp"


def measure(operation: Callable[[], object], count: int, repeats: int) -> tuple[float, ...]:
    for _ in range(100):
        operation()
    runs = []
    for _ in range(repeats):
        before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(count):
            operation()
        after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - started
        runs.append(
            (
                (after.ru_utime - before.ru_utime) / count * 1e6,
                (after.ru_stime - before.ru_stime) / count * 1e6,
                wall / count * 1e6,
            )
        )
    return tuple(statistics.median(run[i] for run in runs) for i in range(3))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="a libpq URL, e.g. postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    conn = psycopg.connect(args.url, autocommit=True, prepare_threshold=None)
    info: dict = {}
    values = {"n": 41, "s": "alice"}
    lookup = pgwire.statement_from_pyformat(LOOKUP, {})
    lock = pgwire.statement_from_pyformat("SELECT pg_advisory_xact_lock(%(k)s, 1)", {})
    begin = pgwire.statement_from_pyformat("BEGIN", {})
    commit = pgwire.statement_from_pyformat("COMMIT", {})

    def cursor_one() -> object:
        return conn.execute(LOOKUP, values).fetchone()

    def cursor_pipeline() -> object:
        with conn.pipeline():
            conn.execute("BEGIN")
            conn.execute("SELECT pg_advisory_xact_lock(%(k)s, 1)", {"k": 7})
            cursor = conn.execute(LOOKUP, values)
            conn.execute("COMMIT")
        return cursor.fetchone()

    def pgwire_one() -> object:
        return pgwire.run(conn, info, [(lookup, values)])[0].fetchone()

    def pgwire_batch() -> object:
        batch = [(begin, {}), (lock, {"k": 7}), (lookup, values), (commit, {})]
        return pgwire.run(conn, info, batch)[2].fetchone()

    # The same answer both ways (but for now()).
    assert cursor_one()[:2] == pgwire_one()[:2] == pgwire_batch()[:2] == (42, "alice")
    heading = f"per operation, median of {args.repeats} x {args.count}"
    print(f"{heading:44s} {'user':>8s} {'sys':>8s} {'wall':>8s}")
    for name, operation in (
        ("one statement, psycopg cursor", cursor_one),
        ("one statement, pgwire", pgwire_one),
        ("BEGIN+lock+lookup+COMMIT, psycopg pipeline", cursor_pipeline),
        ("BEGIN+lock+lookup+COMMIT, pgwire", pgwire_batch),
    ):
        user, system, wall = measure(operation, args.count, args.repeats)
        print(f"{name:44s} {user:7.1f}µs {system:7.1f}µs {wall:7.1f}µs")


if __name__ == "__main__":
    main()
