"""Fan-out of ONE notification to many bindings selected by tag, delivered to a local fake APNs.

Per database (a fresh SQLite file under /tmp, and/or a PostgreSQL database whose tables are
dropped and migrated again) it starts `notify-server serve` pinned to CPU 0 and the fake APNs
(tests/delivery/fake_apns.py, a real HTTP/2 h2c server answering 200) pinned to CPU 1, makes an
account, an APNs token-auth credential and a service over HTTP, bulk-inserts the bindings with
SQLAlchemy Core, POSTs one Notification with Tag=FAST and measures:

  (a) the time until the 201 (the request writes the outbox and must not wait for delivery);
  (b) the outbox rows written with the 201 (a large fan-out's first chunk; the workers expand
      the rest), and in all, checked against the bindings;
  (c) deliveries per second (first request at the fake -> last row final), and per-delivery
      latencies from the fake's receipt timestamps and the rows' final date_updated.

Only 127.0.0.1 is ever targeted. See bench/FANOUT.md.

    .venv/bin/python bench/fanout_bench.py --bindings 100000 --databases sqlite,postgresql
"""

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"  # the only address this benchmark sends anything to
SERVER_CPU, FAKE_CPU = 0, 1
REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 300.0  # two processes starting on a loaded 2-core machine took over 90 s
HTTP_TIMEOUT = 600.0  # the 201 of a large fan-out on a loaded machine
POLL_SECONDS = 0.25
TAG = "FAST"
NOISE_TAG = "SLOW"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test_h3"
BASELINE_COMMIT = "46ab63f"
DEFAULT_WORKTREE = Path("/tmp/fanout-base")
FAST_FAKE = Path(__file__).resolve().parent / "fake_apns_fast.mjs"
INSERT_BATCH = 5000
# This many create-binding calls go through the HTTP API first, to show what seeding
# everything that way would cost (and why the rest goes in through SQLAlchemy Core).
API_PROBE_BINDINGS = 200

sys.path.insert(0, str(REPO))  # tests.delivery.fake_apns


# The fake APNs, run as `fanout_bench.py --fake-apns` in its own (pinned) process.


def fake_apns_main() -> int:
    """Serve the fake; answer line commands on stdin: `count`, `dump PATH`, `quit`."""
    import resource

    from tests.delivery.fake_apns import OK, Answer, ApnsRequest, FakeApns

    class TimedFakeApns(FakeApns):
        """Keeps only (receipt time, device token, HTTP version): the base class keeps every
        request with its headers and body, which 100,000 times is needless memory."""

        def __init__(self) -> None:
            super().__init__()
            self.receipts: list[tuple[float, str, str]] = []

        def _answer_for(self, request: ApnsRequest) -> Answer:
            self.receipts.append((time.time(), request.token, request.http_version))
            return OK

    fake = TimedFakeApns().start()
    print(fake.url, flush=True)
    for line in sys.stdin:
        command, _, argument = line.strip().partition(" ")
        if command == "count":
            print(len(fake.receipts), flush=True)
        elif command == "dump":
            receipts = list(fake.receipts)
            with open(argument, "w") as out:
                for at, token, version in receipts:
                    out.write(f"{at:.6f} {token} {version}\n")
            usage = resource.getrusage(resource.RUSAGE_SELF)
            print(
                json.dumps(
                    {
                        "requests": len(receipts),
                        "connections": fake._connections,
                        "cpu_seconds": usage.ru_utime + usage.ru_stime,
                    }
                ),
                flush=True,
            )
        elif command == "quit":
            break
    fake.stop()
    return 0


class FakeProcess:
    def __init__(self, process: subprocess.Popen, url: str) -> None:
        self.process = process
        self.url = url

    def ask(self, command: str, timeout: float = 60.0) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return _read_line(self.process, timeout)


def _read_line(process: subprocess.Popen, timeout: float) -> str:
    """One line of the child's stdout, or an error after `timeout` (never a hang)."""
    import selectors

    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise RuntimeError(f"no answer from pid {process.pid} in {timeout:.0f} s")
    line = process.stdout.readline()
    if not line:
        raise RuntimeError(f"pid {process.pid} exited with {process.poll()}")
    return line.strip()


def pinned(cpu: int | str, argv: list[str], pin: bool) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if pin else argv


class FastFakeProcess(FakeProcess):
    """bench/fake_apns_fast.mjs (Node http2): counters only, no receipt times. Answers `count`
    and `dump` as the Python fake does (the dump writes no receipts)."""

    def ask(self, command: str, timeout: float = 60.0) -> str:
        verb = command.split(" ", 1)[0]
        stats = json.loads(super().ask("stats", timeout))
        if verb == "count":
            return str(stats["requests"])
        return json.dumps(
            {
                "requests": stats["requests"],
                "connections": stats["connections"],
                "cpu_seconds": stats["cpu_seconds"],
                "statuses": stats.get("statuses"),
            }
        )


@contextmanager
def fake_apns(pin: bool, kind: str = "python") -> Iterator[FakeProcess]:
    if kind == "node":
        argv = pinned(FAKE_CPU, ["node", str(FAST_FAKE)], pin)
    else:
        argv = pinned(FAKE_CPU, [sys.executable, __file__, "--fake-apns"], pin)
    process = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    try:
        url = _read_line(process, START_TIMEOUT)
        yield (FastFakeProcess if kind == "node" else FakeProcess)(process, url)
    finally:
        with suppress(Exception):
            assert process.stdin is not None
            process.stdin.write("quit\n")
            process.stdin.close()
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# The server.


class Server:
    def __init__(self, process: subprocess.Popen, base_url: str, log_path: Path) -> None:
        self.process = process
        self.base_url = base_url
        self.log_path = log_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


@contextmanager
def notify_server(
    database_url: str,
    env: dict[str, str],
    log_path: Path,
    pin: bool,
    src: Path | None = None,
    workers: int = 1,
) -> Iterator[Server]:
    import httpx

    port = free_port()
    notify = str(Path(sys.executable).with_name("notify-server"))
    argv = [notify, "serve", "--no-migrate", "--port", str(port), "--log-level", "warning"]
    log_file = log_path.open("w")
    # The tree measured comes first on the path (the venv's editable install comes after).
    path = {"PYTHONPATH": str(src)} if src is not None else {}
    process = subprocess.Popen(
        pinned(SERVER_CPU, argv, pin),
        env={**os.environ, "NOTIFY_DATABASE_URL": database_url, **env, **path},
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=log_path.parent,
    )
    base_url = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"notify-server exited with {process.returncode}; {log_path}")
            try:
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"notify-server not healthy in {START_TIMEOUT:.0f} s")
            time.sleep(0.1)
        # More delivery processes: `notify-server worker`s beside the server (not `serve
        # --workers N`, whose children uvicorn kills when a health ping takes over 5 s, as
        # they do on a loaded machine). On the fake's CPU: a 2-core machine has no third.
        helpers = [
            subprocess.Popen(
                pinned(FAKE_CPU, [notify, "worker", "--no-migrate", "--log-level", "warning"], pin),
                env={**os.environ, "NOTIFY_DATABASE_URL": database_url, **env, **path},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=log_path.parent,
            )
            for _ in range(workers - 1)
        ]
        try:
            yield Server(process, base_url, log_path)
        finally:
            for helper in helpers:
                _stop(helper)
    finally:
        _stop(process)
        log_file.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_queue_seconds(pid: int) -> float:
    """Time the process's threads were runnable but waiting for a CPU (/proc/PID/schedstat):
    what other processes on the server's core cost it."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with suppress(OSError, ValueError, IndexError):
            total += int((task / "schedstat").read_text().split()[1])
    return total / 1e9


def postgres_cpu_seconds(database: str) -> float:
    """CPU of the PostgreSQL backends serving `database` (the server's and the poller's)."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmdline.startswith("postgres: ") and f" {database} " in cmdline:
            total += cpu_seconds(int(proc.name))
    return total


# The database: fresh schema, seed data.


def reset_database(url: str) -> None:
    from sqlalchemy import text

    from notify_server import migrate
    from notify_server.db import make_engine
    from notify_server.models import Base

    if not url.startswith("sqlite"):
        _create_if_missing(url)
        engine = make_engine(url)
        with engine.begin() as conn:
            Base.metadata.drop_all(conn)
            conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
        engine.dispose()
    migrate.upgrade(url)


def _create_if_missing(url: str) -> None:
    """The bench's own PostgreSQL database, made on a new machine (the server has `test`)."""
    from sqlalchemy import create_engine, make_url, text

    target = make_url(url)
    engine = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        name = target.database
        if not conn.execute(
            text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
        ).first():
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()


def seed_bindings(
    engine: Any, account_sid: str, service_id: int, count: int, noise: int
) -> dict[str, Any]:
    """`count` apn bindings tagged FAST and `noise` without it (some tagged SLOW, some with no
    tag), one identity each, straight into bindings and binding_tags."""
    from sqlalchemy import insert

    from notify_server.bindings.repository import binding_tags, bindings, digest
    from notify_server.wire import utcnow

    now = utcnow()
    started = time.perf_counter()
    plan = [(TAG, count), (NOISE_TAG, noise // 2), (None, noise - noise // 2)]
    number = 0
    for tag, how_many in plan:
        for start in range(0, how_many, INSERT_BATCH):
            # One transaction per batch: a single long one would hold SQLite's write lock past
            # the server's busy_timeout (its worker polls meanwhile and would log errors).
            with engine.begin() as conn:
                rows = []
                for _ in range(min(INSERT_BATCH, how_many - start)):
                    number += 1
                    identity = f"user-{number:07d}"
                    address = secrets.token_hex(32)  # an APNs device token's form
                    rows.append(
                        {
                            "sid": "BS" + uuid.uuid4().hex,
                            "account_sid": account_sid,
                            "service_id": service_id,
                            "identity": identity,
                            "binding_type": "apn",
                            "address": address,
                            "address_key": digest(identity, "apn", address),
                            "endpoint": None,
                            "endpoint_key": None,
                            "credential_sid": None,
                            "notification_protocol_version": "3",
                            "tags": json.dumps([tag] if tag else []),
                            "date_created": now,
                            "date_updated": now,
                        }
                    )
                statement = insert(bindings).returning(bindings.c.id, sort_by_parameter_order=True)
                ids = [row.id for row in conn.execute(statement, rows)]
                if tag:
                    tag_rows = [
                        {"binding_id": i, "tag": tag, "service_id": service_id} for i in ids
                    ]
                    conn.execute(insert(binding_tags), tag_rows)
    return {"seconds": time.perf_counter() - started, "tagged": count, "noise": noise}


def probe_create_binding(client: Any, service_sid: str) -> float:
    """create-binding calls per second through the HTTP API, one client, one at a time."""
    started = time.perf_counter()
    for number in range(API_PROBE_BINDINGS):
        _created(
            client.post(
                f"/v1/Services/{service_sid}/Bindings",
                data={
                    "Identity": f"probe-{number:04d}",
                    "BindingType": "apn",
                    "Address": secrets.token_hex(32),
                },
            )
        )
    return API_PROBE_BINDINGS / (time.perf_counter() - started)


# Measuring.


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


def epoch(naive_utc: datetime | str) -> float:
    if isinstance(naive_utc, str):  # SQLite hands back text for raw SQL
        naive_utc = datetime.fromisoformat(naive_utc)
    return naive_utc.replace(tzinfo=UTC).timestamp()


def committed_transactions(engine: Any) -> int | None:
    """PostgreSQL's count of committed transactions in this database (None on SQLite). Backends
    report it when they go idle, so read it a moment after the work ended."""
    from sqlalchemy import text

    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as conn:
        query = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        return conn.execute(text(query)).scalar_one()


def open_rows(engine: Any) -> int:
    """Rows not final yet, counting an expansion still to write as open (the workers write a
    large notification's targets after its 201, chunk by chunk). The database holds this one
    notification only, so the status index answers this without touching the table."""
    from sqlalchemy import text

    with engine.connect() as conn:
        query = "SELECT count(*) FROM deliveries WHERE status IN ('pending', 'sending')"
        pending = conn.execute(text(query)).scalar_one()
        expanding = conn.execute(text("SELECT count(*) FROM expansions")).scalar_one()
        return pending + expanding


def outbox_rows(engine: Any) -> int:
    from sqlalchemy import text

    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM deliveries")).scalar_one()


def start_profile(pid: int, seconds: float, path: Path, pin: bool) -> subprocess.Popen | None:
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if py_spy is None:
        print("  (no py-spy: `.venv/bin/pip install py-spy`; no profile)")
        return None
    argv = [py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds))]
    # --idle: a thread blocked on the database socket is "idle" to py-spy; we want it.
    argv += ["--rate", "100", "--format", "raw", "--idle", "--threads", "--output", str(path)]
    return subprocess.Popen(
        pinned(FAKE_CPU, argv, pin), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


# Where the event-loop thread's samples fall, first match wins (inner phases first).
PHASES = (
    (
        "report_due (notify_server/delivery/callbacks.py",
        "callbacks: report_due (a query when woken)",
    ),
    ("_renew_leases (notify_server/delivery/worker.py", "worker: renew leases"),
    (
        "_claim (notify_server/delivery/worker.py",
        "worker: claim (due rows, lease UPDATE, job SELECT, COMMIT)",
    ),
    ("_record (notify_server/delivery/worker.py", "worker: record the answers (UPDATE, COMMIT)"),
    ("flush (notify_server/delivery/worker.py", "worker: record a batch of answers (awaited)"),
    ("add (notify_server/delivery/worker.py", "worker: queue an answer for the batch"),
    ("_job (notify_server/delivery/worker.py", "worker: build the Job"),
    (
        "ApnsChannel.send (notify_server/delivery/apns.py",
        "APNs channel: payload, JWT, httpx/h2 send",
    ),
    ("_send (notify_server/delivery/worker.py", "worker: _send (wait_for, metrics)"),
    ("RequestResponseCycle", "HTTP requests (the POST)"),
)


def profile_summary(path: Path, top: int = 12) -> list[str]:
    """The event-loop thread (the one running the worker): its time by worker phase, then
    the functions with the most inclusive and self time."""
    threads: dict[str, list[tuple[list[str], int]]] = defaultdict(list)
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, *frames = stack.split(";")
        threads[thread].append((frames, int(count)))
    if not threads:
        return ["  (empty profile)"]
    # The worker's coroutines run only on the loop's thread (its statements on others').
    on_loop = (
        "_send (notify_server/delivery/worker.py",
        "_deliver (notify_server/delivery/worker.py",
    )
    loop = max(
        threads.values(),
        key=lambda s: sum(n for frames, n in s if any(k in f for f in frames for k in on_loop)),
    )
    total = sum(n for _, n in loop)
    phases: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for raw, n in loop:
        joined = ";".join(raw)
        phase = next((name for key, name in PHASES if key in joined), None)
        phases[phase or "event loop itself (uvloop: its own work and idle), other"] += n
        frames = [_frame(f) for f in raw]
        if frames:
            self_time[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"  event-loop thread: {total} samples at 100/s (idle included), by phase:"]
    lines += [f"    {100 * n / total:5.1f}%  {name}" for name, n in phases.most_common()]
    lines.append("  inclusive (notify_server and the libraries it waits in):")
    interesting = ("notify_server", "httpx", "httpcore", "sqlalchemy", "psycopg", "h2/")
    skip = ("cli.py", "main (", "serve (", "run (")
    picked = [
        (f, n)
        for f, n in inclusive.most_common()
        if any(k in f for k in interesting) and not any(f.startswith(k) or k in f for k in skip)
    ]
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in picked[:top]]
    lines.append("  self (leaf frames):")
    lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in self_time.most_common(top)]
    return lines


def _frame(frame: str) -> str:
    # "name (path/to/module.py:123)" -> "name (module/file.py)": shorter, line-independent.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    parts = where.split("/")
    return f"{name} ({'/'.join(parts[-2:])})" if where else name


def raw_h2_rate(args: argparse.Namespace, workdir: Path) -> float | None:
    """The raw `h2` client of bench/h2_senders.py against the same fast fake, pinned the same
    way, right after a delivery run: the reference the pipeline's rate is compared with."""
    out = workdir / "raw-h2.json"
    argv = [sys.executable, str(REPO / "bench" / "h2_senders.py"), "--only", "c-raw-h2"]
    argv += ["--skip-ceilings", "-n", str(args.raw_h2_requests), "--repeats", "1"]
    argv += ["--busy-wait", "0", "--json", str(out)] + ([] if args.pin else ["--no-pin"])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 or not out.exists():
        print(f"  raw h2 client: failed ({done.stderr.strip().splitlines()[-1:]})")
        return None
    rate = float(json.loads(out.read_text())["senders"]["c-raw-h2"]["rate"])
    print(f"  raw h2 client against the same fake, right after: {rate:,.0f} req/s")
    return rate


def run_database(
    kind: str, args: argparse.Namespace, workdir: Path, tree: str, src: Path, workers: int
) -> dict[str, Any]:
    import httpx
    from cryptography.fernet import Fernet
    from sqlalchemy import select, text

    from notify_server.db import make_engine
    from notify_server.services.models import Service
    from tests.delivery.fake_apns import ec_key_pem

    sqlite_url = f"sqlite:///{workdir / f'fanout-{tree}-{workers}p.db'}"
    database_url = sqlite_url if kind == "sqlite" else args.postgres_url
    label = f"{tree}-{kind}-{workers}p"
    print(f"\n== {tree} tree ({src}), {kind}, {workers} process(es): {database_url}")
    reset_database(database_url)
    engine = make_engine(database_url)
    account_sid = "AC" + uuid.uuid4().hex
    auth_token = secrets.token_hex(16)
    env = {
        "NOTIFY_ACCOUNT_SID": account_sid,
        "NOTIFY_AUTH_TOKEN": auth_token,
        "NOTIFY_SECRET_KEY": Fernet.generate_key().decode(),
        "NOTIFY_ACCESS_LOG": "false",
    }
    if args.worker_concurrency:
        env["NOTIFY_WORKER_CONCURRENCY"] = str(args.worker_concurrency)
    result: dict[str, Any] = {
        "database": kind,
        "bindings": args.bindings,
        "tree": tree,
        "processes": workers,
        "fake_kind": args.fake,
    }
    with fake_apns(args.pin, args.fake) as fake:
        env["NOTIFY_APNS_SANDBOX_URL"] = env["NOTIFY_APNS_PRODUCTION_URL"] = fake.url
        log_path = workdir / f"server-{label}.log"
        with (
            notify_server(database_url, env, log_path, args.pin, src, workers) as server,
            httpx.Client(
                base_url=server.base_url, auth=(account_sid, auth_token), timeout=HTTP_TIMEOUT
            ) as client,
        ):
            credential = _created(
                client.post(
                    "/v1/Credentials",
                    data={
                        "Type": "apn",
                        "FriendlyName": "fan-out bench",
                        "TokenKey": ec_key_pem(),
                        "KeyId": "BENCHKEY01",
                        "TeamId": "BENCHTEAM1",
                        "BundleId": "com.example.fanout",
                    },
                )
            )
            service = _created(
                client.post(
                    "/v1/Services",
                    data={"FriendlyName": "fan-out", "ApnCredentialSid": credential["sid"]},
                )
            )
            with engine.connect() as conn:
                service_id = conn.execute(
                    select(Service.id).where(Service.sid == service["sid"])
                ).scalar_one()
            api_rate = probe_create_binding(client, service["sid"])
            seeded = seed_bindings(engine, account_sid, service_id, args.bindings, args.noise)
            api_minutes = (args.bindings + args.noise) / api_rate / 60
            print(
                f"  seeded {args.bindings:,} apn bindings tagged {TAG} + {args.noise:,} without"
                f" it in {seeded['seconds']:.1f} s, by a bulk INSERT through SQLAlchemy Core,"
                f" not the HTTP API: {API_PROBE_BINDINGS} create-binding calls (untagged"
                f" noise) ran at {api_rate:,.0f}/s from one client, so the API would take"
                f" ~{api_minutes:.1f} min"
            )
            if kind != "sqlite":
                with engine.begin() as conn:
                    conn.execute(text("ANALYZE"))
            result["seed_seconds"] = seeded["seconds"]
            _wait_for_quiet(engine)

            pg_name = database_url.rsplit("/", 1)[-1].split("?")[0]
            commits_before = committed_transactions(engine)
            posted_at = time.time()
            started = time.perf_counter()
            response = client.post(
                f"/v1/Services/{service['sid']}/Notifications",
                data={"Tag": TAG, "Title": "fan-out", "Body": "one notification, many devices"},
            )
            created_seconds = time.perf_counter() - started
            _created(response)
            received_at_201 = int(fake.ask("count"))
            # CPU is counted from here: delivery only, not the request's fan-out INSERT.
            server_cpu_before = cpu_seconds(server.process.pid)
            server_wait_before = run_queue_seconds(server.process.pid)
            pg_cpu_before = postgres_cpu_seconds(pg_name) if kind != "sqlite" else 0.0
            profiler = None
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
                profile_path = args.profile / f"fanout-{label}.txt"
                profiler = start_profile(
                    server.process.pid, args.profile_seconds, profile_path, args.pin
                )
            written = outbox_rows(engine)
            result.update(
                created_seconds=created_seconds,
                rows_at_201=written,
                received_when_201_returned=received_at_201,
            )
            print(
                f"  (a) 201 in {created_seconds * 1000:,.0f} ms"
                f" (the fake had {received_at_201:,} requests when it returned)"
            )
            print(
                f"  (b) {written:,} outbox rows written with the 201"
                + ("" if written == args.bindings else " (the workers expand the rest)")
            )

            deadline = time.monotonic() + args.deadline
            remaining = open_rows(engine)
            while remaining and time.monotonic() < deadline:
                if server.process.poll() is not None:
                    raise RuntimeError(f"notify-server died; see {log_path}")
                time.sleep(POLL_SECONDS)
                remaining = open_rows(engine)
            finished = remaining == 0
            written = outbox_rows(engine)
            if written != args.bindings:
                print(f"  MISMATCH: {written:,} outbox rows in all, expected {args.bindings:,}")
            server_cpu = cpu_seconds(server.process.pid) - server_cpu_before
            server_wait = run_queue_seconds(server.process.pid) - server_wait_before
            pg_cpu = postgres_cpu_seconds(pg_name) - pg_cpu_before if kind != "sqlite" else 0.0
            if profiler is not None:
                with suppress(subprocess.TimeoutExpired):
                    profiler.wait(timeout=args.profile_seconds + 30)
                _stop(profiler)
            if commits_before is not None:
                time.sleep(2)  # let idle backends flush their statistics
                commits = committed_transactions(engine) - commits_before
                result["commits_per_delivery"] = commits / max(1, written - remaining)
            receipts_path = workdir / f"receipts-{label}.txt"
            fake_stats = json.loads(fake.ask(f"dump {receipts_path}", timeout=120))
            if not receipts_path.exists():  # the fast fake keeps counters only
                receipts_path = None
            result.update(
                finished=finished,
                final_rows=written - remaining,
                fake=fake_stats,
                **_delivery_figures(engine, receipts_path, posted_at, written),
            )
            if not finished:
                print(f"  DEADLINE: {remaining:,} rows still open after {args.deadline:.0f} s")
            span = result.get("delivery_seconds") or float("nan")
            result["server_cpu_share"] = server_cpu / span
            result["server_run_queue_share"] = server_wait / span
            result["postgres_cpu_share"] = pg_cpu / span if kind != "sqlite" else None
            result["fake_cpu_share"] = fake_stats["cpu_seconds"] / span
            _print_delivery(result)
            errors = sum('"level":"error"' in line for line in log_path.read_text().splitlines())
            result["server_log_errors"] = errors
            if errors:
                print(f"      server log: {errors} error line(s), see {log_path} (kept)")
            if profiler is not None and profile_path.exists():
                print(f"  profile ({profile_path}):")
                print("\n".join(profile_summary(profile_path)))
    engine.dispose()
    if args.raw_h2_requests and result.get("finished") and args.fake == "node":
        result["raw_h2_per_second"] = raw_h2_rate(args, workdir)
    return result


def baseline_tree(args: argparse.Namespace) -> Path:
    """The baseline commit checked out at --worktree (made again if it is another commit):
    its src/ goes first on the server's path. The schema is the current tree's (migrated by
    this process); the baseline runs on it with --no-migrate, as bench/fairness_bench.py does."""
    git = ["git", "-C", str(REPO)]
    wanted = subprocess.run(
        [*git, "rev-parse", "--verify", f"{args.baseline}^{{commit}}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    path: Path = args.worktree
    if path.exists():
        head = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        if head == wanted:
            return path / "src"
        subprocess.run([*git, "worktree", "remove", "--force", str(path)], capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
    subprocess.run([*git, "worktree", "add", "--detach", str(path), wanted], check=True)
    return path / "src"


def _created(response: Any) -> dict[str, Any]:
    if response.status_code != 201:
        raise RuntimeError(
            f"{response.request.method} {response.request.url}: {response.status_code}"
            f" {response.text[:500]}"
        )
    return response.json()


def _wait_for_quiet(engine: Any) -> None:
    """Nothing is due before the notification: a leftover row would skew the figures."""
    if open_rows(engine):
        raise RuntimeError("deliveries are open before the notification was sent")


def _delivery_figures(
    engine: Any, receipts_path: Path | None, posted_at: float, rows: int
) -> dict[str, Any]:
    from sqlalchemy import text

    first_receipt: dict[str, float] = {}
    last_receipt: dict[str, float] = {}
    versions: Counter[str] = Counter()
    times = []
    for line in receipts_path.read_text().splitlines() if receipts_path else []:
        at_text, token, version = line.split(" ", 2)
        at = float(at_text)
        times.append(at)
        versions[version] += 1
        first_receipt.setdefault(token, at)
        last_receipt[token] = at
    with engine.connect() as conn:
        finals = conn.execute(
            text(
                "SELECT address, status, attempts, date_updated FROM deliveries"
                " WHERE status IN ('sent', 'failed')"
            )
        ).all()
    statuses = Counter(row.status for row in finals)
    attempts = Counter(row.attempts for row in finals)
    final_at = {row.address: epoch(row.date_updated) for row in finals}
    figures: dict[str, Any] = {
        "requests_at_fake": len(times),
        "http_versions": dict(versions),
        "statuses": dict(statuses),
        "attempts": {str(k): v for k, v in sorted(attempts.items())},
    }
    if receipts_path is None:
        # The fast fake keeps no receipt times: the rows' own times (each row's date_updated
        # is when its answer came back) stand in for them; no per-delivery latencies.
        times = [final_at[a] for a in final_at]
        figures["requests_at_fake"] = None
    if not times or not final_at:
        return figures
    times.sort()
    first, last_final = times[0], max(final_at.values())
    span = last_final - first
    # The middle 80% of requests: the rate once the worker is running and before the tail.
    low, high = times[len(times) // 10], times[(len(times) * 9) // 10]
    middle = ((len(times) * 9) // 10 - len(times) // 10) / (high - low) if high > low else None
    end_to_end = [first_receipt[t] - posted_at for t in first_receipt] or [float("nan")]
    recorded = [final_at[t] - last_receipt[t] for t in last_receipt if t in final_at]
    recorded = recorded or [float("nan")]
    figures.update(
        first_request_after_post=first - posted_at,
        delivery_seconds=span,
        deliveries_per_second=len(final_at) / span if span > 0 else None,
        middle_80_per_second=middle,
        end_to_end_p50=percentile(end_to_end, 0.50),
        end_to_end_p99=percentile(end_to_end, 0.99),
        receipt_to_final_p50=percentile(recorded, 0.50),
        receipt_to_final_p99=percentile(recorded, 0.99),
        receipt_to_final_max=max(recorded) if recorded else None,
        rows=rows,
    )
    return figures


def _print_delivery(result: dict[str, Any]) -> None:
    if "delivery_seconds" not in result:
        print("  (c) no delivery measured")
        return
    ms = 1000
    print(
        f"  (c) {result['final_rows']:,} rows final in {result['delivery_seconds']:.1f} s"
        f" (first request at the fake {result['first_request_after_post'] * ms:,.0f} ms after"
        f" the POST): {result['deliveries_per_second']:,.0f} deliveries/s"
        f" (middle 80%: {result['middle_80_per_second'] or 0:,.0f}/s)"
    )
    print(
        f"      per delivery: POST -> fake receipt p50 {result['end_to_end_p50']:.1f} s,"
        f" p99 {result['end_to_end_p99']:.1f} s (queueing: the whole fan-out is one queue);"
        f" fake receipt -> row final p50 {result['receipt_to_final_p50'] * ms:.1f} ms,"
        f" p99 {result['receipt_to_final_p99'] * ms:.1f} ms,"
        f" max {result['receipt_to_final_max'] * ms:.0f} ms"
    )
    pg = result["postgres_cpu_share"]
    print(
        f"      statuses {result['statuses']}, attempts {result['attempts']},"
        f" {result['fake']['requests']:,} requests at the fake"
        f" {result['http_versions'] or result['fake'].get('statuses')}"
        f" over {result['fake']['connections']} connection(s)"
    )
    exactly_once = result["fake"]["requests"] == result["final_rows"] == result["rows"]
    result["every_row_sent_once"] = exactly_once and result["statuses"] == {"sent": result["rows"]}
    print(f"      every row sent exactly once: {result['every_row_sent_once']}")
    print(
        f"      CPU while delivering: server {100 * result['server_cpu_share']:.0f}% of a core"
        f" (and {100 * result['server_run_queue_share']:.0f}% runnable but waiting for it),"
        f" fake APNs {100 * result['fake_cpu_share']:.0f}%"
        + (f", PostgreSQL backends {100 * pg:.0f}%" if pg is not None else "")
    )
    if result.get("commits_per_delivery") is not None:
        print(
            f"      PostgreSQL transactions committed per delivery (all clients, approx.):"
            f" {result['commits_per_delivery']:.2f}"
        )


def print_summary(results: list[dict[str, Any]], load: tuple[float, float, float]) -> None:
    print("\n== summary")
    print(
        f"{'tree':<9} {'proc':>4} {'database':<11} {'bindings':>9} {'201 ms':>8}"
        f" {'rows@201':>9} {'deliv/s':>8}"
        f" {'mid80/s':>8} {'e2e p50 s':>9} {'e2e p99 s':>9} {'rcpt->final p50/p99 ms':>22}"
    )
    for r in results:
        if "deliveries_per_second" not in r:
            print(f"{r.get('tree', ''):<9} {r['database']:<11} {r['bindings']:>9,} (incomplete)")
            continue
        print(
            f"{r['tree']:<9} {r['processes']:>4} {r['database']:<11} {r['bindings']:>9,}"
            f" {r['created_seconds'] * 1000:>8,.0f}"
            f" {r['rows_at_201']:>9,} {r['deliveries_per_second']:>8,.0f}"
            f" {r['middle_80_per_second'] or 0:>8,.0f} {r['end_to_end_p50']:>9.1f}"
            f" {r['end_to_end_p99']:>9.1f}"
            f" {r['receipt_to_final_p50'] * 1000:>10.1f} / {r['receipt_to_final_p99'] * 1000:.1f}"
        )
    rates = {
        (r["tree"], r["database"], r["processes"]): r["deliveries_per_second"]
        for r in results
        if r.get("deliveries_per_second")
    }
    for kind in ("sqlite", "postgresql"):
        now, base = rates.get(("current", kind, 1)), rates.get(("baseline", kind, 1))
        if now and base:
            print(f"deliveries/s, current / baseline, {kind}: {now / base:.2f}x")
    for r in results:
        raw = r.get("raw_h2_per_second")
        if raw and r.get("deliveries_per_second"):
            print(
                f"deliveries/s / the raw h2 client's req/s right after, {r['tree']}"
                f" {r['database']} {r['processes']}p: {r['deliveries_per_second'] / raw:.2f}x"
            )
    one, two = rates.get(("current", "postgresql", 1)), rates.get(("current", "postgresql", 2))
    if one and two:
        print(f"deliveries/s, PostgreSQL, 2 processes / 1: {two / one:.2f}x")
    print(
        f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
        f" ({os.cpu_count()} CPUs)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fake-apns", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bindings", type=int, default=100_000)
    parser.add_argument("--noise", type=int, default=3000, help="bindings without the tag")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--trees", default="current,baseline", help="current and/or baseline")
    parser.add_argument("--baseline", default=BASELINE_COMMIT, help="the baseline commit")
    parser.add_argument("--worktree", type=Path, default=DEFAULT_WORKTREE)
    parser.add_argument(
        "--pg-processes",
        default="1,2",
        help="delivery processes on PostgreSQL, current tree: serve + N-1 `notify-server worker`",
    )
    parser.add_argument("--fake", choices=("node", "python"), default="node")
    parser.add_argument(
        "--raw-h2-requests",
        type=int,
        default=20_000,
        help="after each run, the raw h2 client sends this many to the fast fake (0: not run)",
    )
    parser.add_argument(
        "--worker-concurrency", type=int, default=None, help="default: the server's (64)"
    )
    parser.add_argument("--deadline", type=float, default=3600.0, help="seconds for delivery")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy raw profiles here")
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    args = parser.parse_args(argv)
    if args.fake_apns:
        return fake_apns_main()
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    unknown = set(databases) - {"sqlite", "postgresql"}
    if unknown:
        parser.error(f"unknown database(s): {', '.join(sorted(unknown))}")
    if args.pin and ((os.cpu_count() or 1) < 2 or not shutil.which("taskset")):
        args.pin = False
    if args.pin:
        # The poller (this process) stays off the server's core.
        os.sched_setaffinity(0, {FAKE_CPU})
    # SIGTERM unwinds like Ctrl-C, so every child is stopped by the context managers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    import notify_server

    print(f"notify_server from {Path(notify_server.__file__).parent}")
    print(
        f"fan-out of one notification to {args.bindings:,} bindings (Tag={TAG}),"
        f" worker_concurrency={args.worker_concurrency or 'default'},"
        f" pinned={'server CPU 0, fake APNs + poller CPU 1' if args.pin else 'no'};"
        f" load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="notify-fanout-"))
    results = []
    keep = args.keep
    try:
        runs = []
        trees = {}
        for tree in [t.strip() for t in args.trees.split(",") if t.strip()]:
            trees[tree] = REPO / "src" if tree == "current" else baseline_tree(args)
            for kind in databases:
                counts = [1]
                if tree == "current" and kind == "postgresql":
                    counts = [int(n) for n in args.pg_processes.split(",")]
                runs += [(tree, kind, n) for n in counts]
        for tree, kind, processes in runs:
            try:
                results.append(run_database(kind, args, workdir, tree, trees[tree], processes))
                keep = keep or bool(results[-1].get("server_log_errors"))
            except (RuntimeError, OSError) as exc:  # one database's failure: go on
                print(f"  FAILED: {exc}")
                log_path = workdir / f"server-{tree}-{kind}-{processes}p.log"
                if log_path.exists():
                    print("  server log, last lines:")
                    for line in log_path.read_text().splitlines()[-15:]:
                        print(f"    {line[:400]}")
                results.append(
                    {"database": kind, "bindings": args.bindings, "error": str(exc), "tree": tree}
                )
                keep = True
    finally:
        if keep:
            print(f"kept {workdir} (server logs, receipts, SQLite file)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print_summary(results, os.getloadavg())
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0 if all(r.get("finished") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
