"""Fan-out expansion: the 201 of a notification to 100,000 and 1,000,000 bindings, and what the
serving process and its other requests feel while the workers write the targets.

Per database and size: a fresh schema, the bindings loaded in one INSERT ... SELECT over a
generated series (tests/support/bulk.py), then a server in a child process of this script
(`expansion_bench.py serve`: create_app under uvicorn, as `notify-server serve` runs it, plus
a 1 ms ticker on its event loop that records every gap). Measured:

  201        time of POST .../Notifications (Tag=all), client side;
  expand     until the last chunk is written (the expansions table empty), and rows/s;
  loop gap   the ticker's largest gap in a window while expanding with no other load,
             beside the same window on the idle server (target < 20 ms);
  fetch p99  wrk on GET .../Bindings/{BS} (2 connections) in the next window, beside the
             same on the idle server (target < 50 ms). Under wrk the loop is busy serving
             it, so the ticker's gaps there are the fetches' own and are not the loop gap.

Delivery is switched off in the child (the delivery worker's own database calls are
another change's subject, and a million sends would take the run's whole time): only the
expander runs in the worker. `--inline` adds, at the first size, the former behaviour beside
it: the chunk as large as the fan-out, every target written in the request.

    .venv/bin/python bench/expansion_bench.py --sizes 100000,1000000 --databases sqlite,postgresql
"""

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.support.bulk
sys.path.insert(0, str(REPO / "bench"))

from fanout_bench import HOST, free_port, reset_database  # noqa: E402

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test_h2"
TICK = 0.001
WRK_CONNECTIONS = 2
WINDOW = 4.0  # seconds of each measuring window


# The child: the server, with a ticker on its loop.


def serve(port: int, ticks_path: Path, deliver: bool) -> None:
    import uvicorn

    from notify_server.app import create_app
    from notify_server.delivery.worker import DeliveryWorker

    if not deliver:

        async def expand_only(self: DeliveryWorker) -> None:
            while not self._stopping:
                await asyncio.sleep(0.1)

        DeliveryWorker._deliver_due = expand_only  # type: ignore[method-assign]

    # A line per gap, written as it happens: uvicorn ends the process on SIGTERM itself.
    gaps = ticks_path.open("w", buffering=1)

    async def ticker() -> None:
        # Where each gap went, from the loop thread's own scheduler counters: on a CPU
        # (the loop itself working), runnable but waiting for one (the machine), or neither:
        # blocked, which for a thread that only sleeps in epoll means waiting for the GIL.
        schedstat = open(f"/proc/self/task/{threading.get_native_id()}/schedstat")  # noqa: SIM115

        def counters() -> tuple[float, float]:
            schedstat.seek(0)
            cpu, runnable, _ = schedstat.read().split()
            return int(cpu) / 1e9, int(runnable) / 1e9

        last = time.monotonic()
        last_cpu, last_runnable = counters()
        while True:
            await asyncio.sleep(TICK)
            now = time.monotonic()
            cpu, runnable = counters()
            if now - last > 2 * TICK:  # monotonic time at the gap's end, the gap, its parts
                gaps.write(f"{now} {now - last} {cpu - last_cpu} {runnable - last_runnable}\n")
            last, last_cpu, last_runnable = now, cpu, runnable

    async def main() -> None:
        config = uvicorn.Config(
            create_app(), host=HOST, port=port, log_level="warning", access_log=False
        )
        ticking = asyncio.create_task(ticker())
        await uvicorn.Server(config).serve()
        ticking.cancel()

    asyncio.run(main())


# The parent: load, start, measure.


SERVER_PORT: int | None = None  # --port: the child's port (else a free one)


def start_child(url: str, env: dict[str, str], ticks: Path, deliver: bool) -> tuple[Any, str]:
    import httpx

    port = SERVER_PORT or free_port()
    argv = [sys.executable, __file__, "serve", "--port", str(port), "--ticks", str(ticks)]
    if deliver:
        argv.append("--deliver")
    process = subprocess.Popen(argv, env={**os.environ, "NOTIFY_DATABASE_URL": url, **env})
    base_url = f"http://{HOST}:{port}"
    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return process, base_url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("server not healthy in 60 s")
        time.sleep(0.1)


def wrk(url: str, auth: tuple[str, str], seconds: float) -> subprocess.Popen:
    import base64

    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    argv = ["wrk", "-t1", f"-c{WRK_CONNECTIONS}", f"-d{seconds:.0f}s", "--latency"]
    argv += ["-H", f"Authorization: Basic {token}", url]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk_figures(output: str) -> dict[str, float]:
    """p50/p99 in ms and requests/s from wrk --latency's report."""
    figures: dict[str, float] = {}
    for share in ("50", "99"):
        match = re.search(rf"^\s+{share}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
        if match:
            figures[f"p{share}_ms"] = float(match[1]) * _UNITS[match[2]]
    match = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if match:
        figures["rps"] = float(match[1])
    match = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    figures["non_2xx"] = float(match[1]) if match else 0.0
    return figures


def run(
    url: str, kind: str, size: int, chunk_size: int, wait_max: float, workdir: Path
) -> dict[str, Any]:
    import httpx
    from cryptography.fernet import Fernet
    from sqlalchemy import func, select, text

    from notify_server.accounts.operations import create_account
    from notify_server.db import make_engine, transaction
    from notify_server.notifications.models import Delivery, Expansion
    from tests.support.bulk import insert_bindings

    reset_database(url)
    engine = make_engine(url)
    with transaction(engine, write=True) as conn:
        created = create_account(conn, None)
    auth = (created.sid, created.auth_token)
    env = {
        "NOTIFY_SECRET_KEY": Fernet.generate_key().decode(),
        "NOTIFY_SECRET_KEY_FILE": str(workdir / "unused.key"),
        "NOTIFY_FANOUT_CHUNK_SIZE": str(chunk_size),
        "NOTIFY_WORKER_POLL_SECONDS": "0.5",
        "NOTIFY_ACCESS_LOG": "false",
        "NOTIFY_LOG_LEVEL": "warning",
    }
    ticks = workdir / f"ticks-{kind}-{size}-{chunk_size}.txt"
    # The service and one binding to fetch through the API; then the load, with the server
    # stopped (a million rows in one transaction would hold SQLite's lock past its timeout).
    process, base_url = start_child(url, env, ticks, deliver=False)
    client = httpx.Client(base_url=base_url, auth=auth, timeout=600)
    service_sid = client.post("/v1/Services", data={"FriendlyName": "bench"}).json()["sid"]
    binding = client.post(
        f"/v1/Services/{service_sid}/Bindings",
        data={"Identity": "probe", "BindingType": "apn", "Address": "probe-token"},
    ).json()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=60)
    result: dict[str, Any] = {
        "database": kind,
        "bindings": size,
        "chunk": chunk_size,
    }
    started = time.perf_counter()
    insert_bindings(engine, created.sid, service_sid, size - 1)
    if kind == "postgresql":  # as autovacuum would soon after a load this size
        with engine.begin() as conn:
            conn.execute(text("ANALYZE bindings"))
    result["load_seconds"] = time.perf_counter() - started
    process, base_url = start_child(url, env, ticks, deliver=False)
    client = httpx.Client(base_url=base_url, auth=auth, timeout=600)
    try:
        fetch_url = f"{base_url}/v1/Services/{service_sid}/Bindings/{binding['sid']}"

        def waiting() -> int:
            with engine.connect() as conn:
                return conn.execute(select(func.count()).select_from(Expansion)).scalar_one()

        # Idle first, side by side with what follows: the ticker alone, then the fetch load.
        quiet_idle = (time.monotonic(), time.monotonic() + WINDOW)
        time.sleep(WINDOW)
        result["idle_fetch"] = wrk_figures(wrk(fetch_url, auth, WINDOW).communicate()[0])
        posted = time.monotonic()
        started = time.perf_counter()
        response = client.post(
            f"/v1/Services/{service_sid}/Notifications", data={"Tag": "all", "Body": "x"}
        )
        result["created_ms"] = (time.perf_counter() - started) * 1000
        assert response.status_code == 201, response.text
        # While expanding: the ticker alone for a window, then the fetch load for one.
        quiet_busy = (time.monotonic(), time.monotonic() + WINDOW)
        time.sleep(WINDOW)
        fetch_from = time.monotonic()
        result["busy_fetch"] = wrk_figures(wrk(fetch_url, auth, WINDOW).communicate()[0])
        fetch_to = time.monotonic()
        deadline = posted + wait_max
        while waiting() and time.monotonic() < deadline:
            time.sleep(0.1)
        expanded = time.monotonic()
        result["expand_seconds"] = expanded - posted
        result["complete"] = not waiting()
        # A window that outlasted the expansion measured an idle server in part.
        result["fetch_within_expansion"] = fetch_to <= expanded
        result["quiet_within_expansion"] = quiet_busy[1] <= expanded
        with engine.connect() as conn:
            rows = conn.execute(select(func.count()).select_from(Delivery)).scalar_one()
            doubled = conn.execute(
                select(func.count() - func.count(Delivery.binding_id.distinct())).select_from(
                    Delivery
                )
            ).scalar_one()
        assert doubled == 0 and (rows == size or not result["complete"]), (rows, doubled)
        result["rows"] = rows
        result["rows_per_second"] = rows / result["expand_seconds"]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        engine.dispose()
    gaps = [tuple(map(float, line.split())) for line in ticks.read_text().splitlines()]

    def within(start: float, end: float) -> list[float]:
        return [gap for at, gap, _, _ in gaps if start <= at <= end]

    busy = within(quiet_busy[0], min(quiet_busy[1], expanded))
    result["max_gap_ms"] = max(busy, default=0.0) * 1000
    result["gaps_over_20ms"] = sum(gap > 0.020 for gap in busy)
    # The gaps over 20 ms while expanding, split: the loop on a CPU, waiting for one, blocked.
    long_gaps = [
        (gap, cpu, runnable, at - quiet_busy[0])
        for at, gap, cpu, runnable in gaps
        if quiet_busy[0] <= at <= min(quiet_busy[1], expanded) and gap > 0.020
    ]
    result["long_gaps_ms"] = sum(gap for gap, _, _, _ in long_gaps) * 1000
    result["long_gaps_cpu_ms"] = sum(cpu for _, cpu, _, _ in long_gaps) * 1000
    result["long_gaps_runnable_ms"] = sum(runnable for _, _, runnable, _ in long_gaps) * 1000

    # All the loop's waiting for a CPU per second, in gaps of any size, idle and expanding.
    def waited(start: float, end: float) -> float:
        spent = sum(r for at, _, _, r in gaps if start <= at <= end)
        return spent * 1000 / max(end - start, 1e-9)

    result["waited_ms_per_s"] = waited(quiet_busy[0], min(quiet_busy[1], expanded))
    result["idle_waited_ms_per_s"] = waited(*quiet_idle)
    result["gaps_over_10ms"] = sum(
        g > 0.010 for at, g, _, _ in gaps if quiet_busy[0] <= at <= min(quiet_busy[1], expanded)
    )
    result["long_gaps"] = [
        f"{gap * 1000:.0f} ms (ran {cpu * 1000:.0f}, waited {runnable * 1000:.0f})"
        f" ending {after:.2f} s in"
        for gap, cpu, runnable, after in long_gaps
    ]
    idle = within(*quiet_idle)
    result["idle_max_gap_ms"] = max(idle, default=0.0) * 1000
    result["idle_gaps_over_20ms"] = sum(gap > 0.020 for gap in idle)
    # Under the fetch load the loop is busy serving it: its gaps are the fetches' own.
    result["fetch_max_gap_ms"] = max(within(fetch_from, fetch_to), default=0.0) * 1000
    return result


def report(result: dict[str, Any]) -> str:
    idle, busy = result["idle_fetch"], result["busy_fetch"]
    partly = "" if result["fetch_within_expansion"] else " (window outlasted the expansion)"
    return (
        f"{result['database']:<10} {result['bindings']:>9,} chunk {result['chunk']:>9,}"
        f": 201 in {result['created_ms']:7.1f} ms;"
        f" {'expanded' if result['complete'] else 'NOT DONE, stopped'} after"
        f" {result['expand_seconds']:6.1f} s ({result['rows']:,} rows,"
        f" {result['rows_per_second']:7,.0f} rows/s)\n"
        f"    loop gap, no fetch load: max {result['max_gap_ms']:5.1f} ms,"
        f" {result['gaps_over_20ms']} over 20 ms in {WINDOW:.0f} s expanding;"
        f" idle max {result['idle_max_gap_ms']:5.1f} ms,"
        f" {result['idle_gaps_over_20ms']} over 20 ms\n"
        f"    gaps over 10 ms expanding: {result['gaps_over_10ms']}; the loop waited for a CPU"
        f" {result['waited_ms_per_s']:.1f} ms/s expanding, {result['idle_waited_ms_per_s']:.1f}"
        f" ms/s idle\n"
        f"    gaps over 20 ms expanding: {result['long_gaps_ms']:.0f} ms in all, of which the"
        f" loop ran {result['long_gaps_cpu_ms']:.0f} ms, waited for a CPU"
        f" {result['long_gaps_runnable_ms']:.0f} ms, was blocked (the GIL) the rest\n"
        + "".join(f"      {line}\n" for line in result["long_gaps"])
        + f"    fetch ({WRK_CONNECTIONS} connections): p50 {busy.get('p50_ms', 0):5.1f} /"
        f" p99 {busy.get('p99_ms', 0):5.1f} ms at {busy.get('rps', 0):5.0f} req/s"
        f" expanding{partly};"
        f" idle p50 {idle.get('p50_ms', 0):5.1f} / p99 {idle.get('p99_ms', 0):5.1f} ms"
        f" at {idle.get('rps', 0):5.0f} req/s; non-2xx {busy.get('non_2xx', 0):.0f}\n"
        f"    bindings loaded in {result['load_seconds']:.1f} s"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    child = commands.add_parser("serve")
    child.add_argument("--port", type=int, required=True)
    child.add_argument("--ticks", type=Path, required=True)
    child.add_argument("--deliver", action="store_true")
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--inline", action="store_true", help="also every target in the request")
    parser.add_argument("--port", type=int, help="the server's port (default: a free one)")
    parser.add_argument(
        "--wait-max", type=float, default=3600, help="stop waiting for the expansion after"
    )
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.port, args.ticks, args.deliver)
        return 0
    global SERVER_PORT
    SERVER_PORT = args.port
    sizes = [int(s) for s in args.sizes.split(",")]
    import notify_server

    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()}")
    print(f"measuring {Path(notify_server.__file__).parent}")
    with tempfile.TemporaryDirectory(prefix="expansion-bench-") as tmp:
        workdir = Path(tmp)
        for kind in args.databases.split(","):
            url = f"sqlite:///{workdir / 'bench.db'}" if kind == "sqlite" else args.postgres_url
            for size in sizes:
                chunks = [args.chunk] + ([size] if args.inline and size == sizes[0] else [])
                for chunk in chunks:
                    if kind == "sqlite":
                        for suffix in ("", "-wal", "-shm"):
                            Path(f"{workdir / 'bench.db'}{suffix}").unlink(missing_ok=True)
                    result = run(url, kind, size, chunk, args.wait_max, workdir)
                    print(report(result), flush=True)
    print(f"load at the end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
