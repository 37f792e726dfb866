"""Console page times at 1,000,000 bindings (issue 11: a page under 100 ms on SQLite).

A temporary SQLite database gets one service with `--bindings` bindings, loaded in one
INSERT ... SELECT (tests/support/bulk.py): most are apn and untagged, 1% are fcm tagged
`beta`. A `notify-server serve` child (one process, as a user runs it) answers; this script
signs in to the console and times whole page loads over HTTP, client side (the request,
the domain list operation, the template, the transfer), `--runs` times each, and prints the
median and p90. Beside each console page, the API's list with the same filters
(GET /v1/Services/{IS}/Bindings, JSON) as the baseline: the ratio is what the page costs
over the API.

    .venv/bin/python bench/console_bench.py                      # 1,000,000 bindings
    .venv/bin/python bench/console_bench.py --bindings 100000 --runs 11
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.support.bulk, tests.servers

from tests.servers import live_server  # noqa: E402
from tests.support.bulk import insert_bindings  # noqa: E402

TARGET_MS = 100.0


def seed(url: str, count: int) -> tuple[str, str, str, int]:
    """(account sid, token, service sid, id of a binding 90% of the way in)."""
    from sqlalchemy import text

    from notify_server import migrate
    from notify_server.accounts.operations import create_account
    from notify_server.db import make_engine, transaction
    from notify_server.services.operations import create_service
    from notify_server.services.schemas import ServiceForm
    from notify_server.wire import FormData

    migrate.upgrade(url)
    engine = make_engine(url)
    with transaction(engine, write=True) as conn:
        account = create_account(conn, None)
        service = create_service(conn, account.sid, ServiceForm.parse(FormData([])))
    started = time.perf_counter()
    rare = count // 100
    insert_bindings(engine, account.sid, service.sid, count - rare)
    insert_bindings(engine, account.sid, service.sid, rare, binding_type="fcm", tag="beta")
    with engine.connect() as conn:
        deep = conn.execute(
            text("SELECT id FROM bindings ORDER BY id LIMIT 1 OFFSET :n"), {"n": count * 9 // 10}
        ).scalar_one()
    engine.dispose()
    print(f"seeded {count:,} bindings in {time.perf_counter() - started:.1f} s", flush=True)
    return account.sid, account.auth_token, service.sid, deep


def timed(http: httpx.Client, path: str, runs: int, **kwargs: object) -> tuple[float, float, int]:
    times = []
    status = 0
    http.get(path, **kwargs)  # type: ignore[arg-type]  # warm: statement caches, page cache
    for _ in range(runs):
        started = time.perf_counter()
        response = http.get(path, **kwargs)  # type: ignore[arg-type]
        times.append((time.perf_counter() - started) * 1000)
        status = response.status_code
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9) - 1], status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bindings", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=21)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="console-bench-") as directory:
        url = f"sqlite:///{directory}/bench.db"
        os.environ["NOTIFY_SECRET_KEY_FILE"] = f"{directory}/secret.key"
        account_sid, token, service_sid, deep = seed(url, args.bindings)
        rare_identity = f"user-{args.bindings // 200}"
        cases = [
            ("first page", {}),
            ("page 90% in (keyset)", {"page": f"PT{deep}"}),
            ("identity", {"identity": "user-123456"}),
            ("tag beta (1%)", {"tag": "beta"}),
            ("type fcm (1%)", {"type": "fcm"}),
            ("type sms (none)", {"type": "sms"}),
            ("tag + type", {"tag": "beta", "type": "fcm"}),
            ("identity of the 1%", {"identity": rare_identity, "type": "fcm"}),
        ]
        env = {"NOTIFY_CONSOLE_ENABLED": "true", "NOTIFY_WORKER_ENABLED": "false"}
        with (
            live_server(url, env=env) as server,
            httpx.Client(base_url=server.base_url, timeout=30, follow_redirects=True) as http,
        ):
            credentials = {"username": account_sid, "password": token}
            signed = http.post("/console/sign-in", data=credentials)
            assert signed.status_code == 200, signed.text
            print(
                f"\n{args.bindings:,} bindings, SQLite, one server process; {args.runs} runs each,"
                " milliseconds, client side\n"
            )
            print(f"{'page':<24}{'console p50':>12}{'p90':>8}{'API p50':>10}{'ratio':>8}")
            worst = 0.0
            for name, params in cases:
                page, p90, status = timed(
                    http, f"/console/services/{service_sid}/bindings", args.runs, params=params
                )
                assert status == 200, (name, status)
                api_params = {
                    "Identity": params.get("identity"),
                    "Tag": [t for t in (params.get("tag"), params.get("type")) if t],
                    "PageToken": params.get("page"),
                }
                api, _, api_status = timed(
                    http,
                    f"/v1/Services/{service_sid}/Bindings",
                    args.runs,
                    params={k: v for k, v in api_params.items() if v},
                    auth=(account_sid, token),
                )
                assert api_status == 200, (name, api_status)
                worst = max(worst, page)
                print(f"{name:<24}{page:>12.1f}{p90:>8.1f}{api:>10.1f}{page / api:>8.2f}")
            verdict = "under" if worst < TARGET_MS else "OVER"
            print(f"\nslowest console median {worst:.1f} ms: {verdict} the {TARGET_MS:.0f} ms goal")


if __name__ == "__main__":
    main()
