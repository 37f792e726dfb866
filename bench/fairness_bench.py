"""Another account's delivery latency while one account fans out to 100,000 bindings and has a
dead delivery callback endpoint: the current tree against a baseline commit, side by side.

Per tree (the working tree, and the baseline checked out with `git worktree add` and put first on
PYTHONPATH) and per database (a fresh SQLite file under /tmp; a PostgreSQL database whose tables
are dropped and migrated again) it starts one `notify-server serve --workers 1` pinned to CPU 0,
delivering through the log channel (no credentials), with NOTIFY_OUTBOUND_ALLOW=127.0.0.0/8 and
the access log off. Then:

  - account A: a service of --bindings bindings whose DeliveryCallbackUrl is a dead endpoint
    (a TCP listener on 127.0.0.2, a thread of this process, that accepts and never answers);
    A posts one notification with Tag=all;
  - account B: a service of one binding; right after A's 201, B posts one single-target
    notification every --interval seconds, --probes times, each polled through
    GET .../Notifications/{NT}/Deliveries until it is final: B's latency;
  - A's progress (rows final) when each probe lands, and the time until all of A's rows are
    final, within --deadline seconds of A's POST (then reported as unfinished).

Only 127.0.0.1 (the server) and 127.0.0.2 (the dead endpoint) are ever targeted. See
bench/README.md, "Fairness".

    .venv/bin/python bench/fairness_bench.py                  # 100,000 bindings, both databases
    .venv/bin/python bench/fairness_bench.py --bindings 5000 --probes 5 --databases sqlite
"""

import argparse
import bisect
import heapq
import json
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# The fan-out bench's helpers: same pinning, process handling and database reset.
from fanout_bench import (
    _created,
    _stop,
    cpu_seconds,
    epoch,
    free_port,
    percentile,
    pinned,
    postgres_cpu_seconds,
    reset_database,
    run_queue_seconds,
)

HOST = "127.0.0.1"  # the server
DEAD_HOST = "127.0.0.2"  # the dead callback endpoint (loopback too)
SERVER_CPU, BENCH_CPU = 0, 1
REPO = Path(__file__).resolve().parent.parent
BASELINE_COMMIT = "46ab63f"
DEFAULT_WORKTREE = Path("/tmp/fair-base")
DEFAULT_POSTGRES = {
    "current": "postgresql+psycopg://postgres@127.0.0.1:5432/test_h5",
    "baseline": "postgresql+psycopg://postgres@127.0.0.1:5432/test_h5_base",
}
START_TIMEOUT = 90.0
CLI_TIMEOUT = 120.0
POST_TIMEOUT = 600.0  # A's 201 on a loaded machine
INSERT_BATCH = 5000
# Each probe is polled this soon after its 201, then 1.5x later each time, at most this often:
# fine-grained while latencies are short, and 20 waiting probes cost ~40 GETs/s at worst.
FIRST_POLL, MAX_POLL = 0.02, 0.5
FINAL = ("sent", "failed")
SCHEMA_NOTE = (
    "schema: migrated by the current tree's migrations (alembic, from the bench process) for"
    " both trees; the baseline server runs on it with --no-migrate (its extra columns"
    " accounts.fair_clock, deliveries.fair_key and deliveries.callback_error have defaults, and"
    " the baseline also maintains the two extra partial indexes)"
)

# Run as the server and the CLI, so that the child itself says which notify_server it runs.
WRAPPER = (
    "import sys, notify_server; print('notify_server from', notify_server.__file__, flush=True);"
    " from notify_server.cli import main; sys.exit(main())"
)


# The dead endpoint.


class DeadEndpoint:
    """Accepts TCP connections on 127.0.0.2 and never answers; counts what it holds."""

    def __init__(self) -> None:
        self._listener = socket.create_server((DEAD_HOST, 0), backlog=128)
        self._listener.setblocking(False)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://{DEAD_HOST}:{self.port}/delivery-callback"
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self.held = self.max_held = self.accepted = self.requests = 0
        self._thread = threading.Thread(target=self._run, name="dead-endpoint", daemon=True)

    def __enter__(self) -> "DeadEndpoint":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        for key in list(self._selector.get_map().values()):
            with suppress(OSError):
                key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "held_now": self.held,
                "max_held": self.max_held,
                "accepted": self.accepted,
                "requests": self.requests,
            }

    def _run(self) -> None:
        while not self._stopping.is_set():  # bounded by __exit__
            for key, _ in self._selector.select(timeout=0.2):
                if key.fileobj is self._listener:
                    self._accept()
                else:
                    self._read(key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        with suppress(BlockingIOError):
            conn, _ = self._listener.accept()
            conn.setblocking(False)
            self._selector.register(conn, selectors.EVENT_READ)
            with self._lock:
                self.accepted += 1
                self.held += 1
                self.max_held = max(self.max_held, self.held)

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            # The request is read (so the client is not stuck writing) and never answered.
            with self._lock:
                self.requests += data.count(b"POST ")
            return
        self._selector.unregister(conn)
        conn.close()
        with self._lock:
            self.held -= 1


# The trees.


@dataclass
class Tree:
    name: str  # "current" or "baseline"
    src: Path
    commit: str
    dirty: bool


def current_tree() -> Tree:
    head = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "src"))
    return Tree("current", REPO / "src", head, dirty)


def baseline_tree(path: Path, commit: str) -> Tree:
    """A worktree of `commit` at `path` (made again if it is not exactly that commit)."""
    wanted = _git("rev-parse", "--verify", f"{commit}^{{commit}}")
    if path.exists():
        existing = ""
        with suppress(subprocess.CalledProcessError):
            existing = _git("-C", str(path), "rev-parse", "HEAD")
        if existing != wanted:
            remove_worktree(path)
    if not path.exists():
        _git("worktree", "add", "--detach", str(path), wanted)
    return Tree("baseline", path / "src", _git("rev-parse", "--short", wanted), False)


def remove_worktree(path: Path) -> None:
    with suppress(subprocess.CalledProcessError):
        _git("worktree", "remove", "--force", str(path))
    if path.exists():  # not a registered worktree after all
        shutil.rmtree(path, ignore_errors=True)
    with suppress(subprocess.CalledProcessError):
        _git("worktree", "prune")


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, check=True, capture_output=True, text=True, timeout=120
    ).stdout.strip()


def tree_env(tree: Tree, database_url: str, secret_key: str) -> dict[str, str]:
    # Nothing NOTIFY_* from the caller's environment: the same settings for both trees.
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
    env.update(
        PYTHONPATH=str(tree.src),
        NOTIFY_DATABASE_URL=database_url,
        NOTIFY_SECRET_KEY=secret_key,
        NOTIFY_ACCESS_LOG="false",
        NOTIFY_OUTBOUND_ALLOW="127.0.0.0/8",
    )
    return env


def check_imported(tree: Tree, first_line: str) -> str:
    """The child's own word on which notify_server it imported; it must be the tree's."""
    prefix = "notify_server from "
    if not first_line.startswith(prefix):
        raise RuntimeError(f"the child did not say which notify_server it runs: {first_line!r}")
    where = Path(first_line[len(prefix) :].strip()).resolve()
    if not where.is_relative_to(tree.src.resolve()):
        raise RuntimeError(f"the {tree.name} child imported {where}, not {tree.src}")
    return str(where)


def create_account(tree: Tree, env: dict[str, str], name: str) -> tuple[dict[str, str], str]:
    argv = [sys.executable, "-c", WRAPPER, "accounts", "create", "--json"]
    done = subprocess.run(
        [*argv, "--friendly-name", name],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        cwd=tempfile.gettempdir(),
    )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or len(lines) < 2:
        raise RuntimeError(f"accounts create: {done.returncode} {done.stderr[-500:]}")
    return json.loads(lines[-1]), check_imported(tree, lines[0])


# The server.


@dataclass
class Server:
    process: "subprocess.Popen[bytes]"
    base_url: str
    log_path: Path
    imported: str


@contextmanager
def notify_server(tree: Tree, env: dict[str, str], log_path: Path, pin: bool) -> Iterator[Server]:
    import httpx

    port = free_port()
    argv = [sys.executable, "-c", WRAPPER, "serve", "--no-migrate", "--workers", "1"]
    argv += ["--host", HOST, "--port", str(port), "--log-level", "warning"]
    log_file = log_path.open("w")
    process = subprocess.Popen(
        pinned(SERVER_CPU, argv, pin),
        env=env,
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
            with suppress(httpx.TransportError):
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"notify-server not healthy in {START_TIMEOUT:.0f} s")
            time.sleep(0.1)
        first_line = log_path.read_text().splitlines()[0] if log_path.stat().st_size else ""
        yield Server(process, base_url, log_path, check_imported(tree, first_line))
    finally:
        _stop(process)
        log_file.close()


# Seeding.


def seed_bindings(engine: Any, account_sid: str, service_id: int, count: int) -> float:
    """`count` untagged apn bindings (Tag=all reaches them), one identity each, straight into
    the bindings table; no credential, so the log channel delivers them."""
    from sqlalchemy import insert

    from notify_server.bindings.repository import bindings, digest
    from notify_server.wire import utcnow

    now = utcnow()
    started = time.perf_counter()
    for start in range(0, count, INSERT_BATCH):
        # One transaction per batch: a single long one would hold SQLite's write lock past
        # the server's busy_timeout while its worker polls.
        rows = []
        for number in range(start, min(start + INSERT_BATCH, count)):
            identity = f"a-user-{number:07d}"
            address = secrets.token_hex(32)
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
                    "tags": "[]",
                    "date_created": now,
                    "date_updated": now,
                }
            )
        with engine.begin() as conn:
            conn.execute(insert(bindings), rows)
    return time.perf_counter() - started


def service_id(engine: Any, sid: str) -> int:
    from sqlalchemy import select

    from notify_server.services.models import Service

    with engine.connect() as conn:
        return int(conn.execute(select(Service.id).where(Service.sid == sid)).scalar_one())


def notification_id(engine: Any, sid: str) -> int:
    from sqlalchemy import text

    with engine.connect() as conn:
        query = text("SELECT id FROM notifications WHERE sid = :sid")
        return int(conn.execute(query, {"sid": sid}).scalar_one())


def open_rows(engine: Any) -> int:
    from sqlalchemy import text

    with engine.connect() as conn:
        query = "SELECT count(*) FROM deliveries WHERE status IN ('pending', 'sending')"
        return int(conn.execute(text(query)).scalar_one())


def final_times(engine: Any, notification: int) -> list[float]:
    """When each final row of the notification became final (the worker writes
    date_updated with microseconds), sorted."""
    from sqlalchemy import text

    with engine.connect() as conn:
        query = text(
            "SELECT date_updated FROM deliveries"
            " WHERE notification_id = :n AND status IN ('sent', 'failed')"
        )
        return sorted(epoch(value) for value in conn.execute(query, {"n": notification}).scalars())


def statuses(engine: Any, notification: int) -> dict[str, int]:
    from sqlalchemy import text

    with engine.connect() as conn:
        query = text(
            "SELECT status, count(*) FROM deliveries WHERE notification_id = :n GROUP BY status"
        )
        return {row[0]: row[1] for row in conn.execute(query, {"n": notification})}


# B's probes.


@dataclass(order=True)
class Probe:
    next_poll: float
    number: int = field(compare=False)
    posted_at: float = field(compare=False)  # wall clock just before the POST was sent
    created_seconds: float = field(compare=False)
    sid: str = field(compare=False)
    wait: float = field(default=FIRST_POLL, compare=False)
    seen_at: float | None = field(default=None, compare=False)
    status: str | None = field(default=None, compare=False)
    polls: int = field(default=0, compare=False)


class Poller:
    """One thread polls every open probe's Deliveries, each on its own backing-off schedule."""

    def __init__(self, base_url: str, auth: tuple[str, str], service_sid: str, until: float):
        import httpx

        self._client = httpx.Client(base_url=base_url, auth=auth, timeout=30)
        self._service_sid = service_sid
        self._until = until  # wall clock: give up then
        self._heap: list[Probe] = []
        self._lock = threading.Lock()
        self._added = threading.Condition(self._lock)
        self._closed = False
        self.done: list[Probe] = []
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="poller", daemon=True)
        self._thread.start()

    def add(self, probe: Probe) -> None:
        with self._added:
            heapq.heappush(self._heap, probe)
            self._added.notify()

    def finish(self, abandon: bool = False) -> list[Probe]:
        """Wait for every probe (until the deadline, or not at all) and return them all."""
        with self._added:
            self._closed = True
            if abandon:
                self._until = time.time()
            self._added.notify()
        self._thread.join(timeout=max(0.0, self._until - time.time()) + 60)
        self._client.close()
        with self._lock:
            return sorted(self.done + self._heap, key=lambda p: p.number)

    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:  # reported, not raised in a thread nobody joins on error
            self.error = f"{type(exc).__name__}: {exc}"

    def _loop(self) -> None:
        while time.time() < self._until:
            with self._added:
                if not self._heap:
                    if self._closed:
                        return
                    self._added.wait(timeout=0.5)
                    continue
                probe = self._heap[0]
                delay = probe.next_poll - time.time()
                if delay > 0:
                    self._added.wait(timeout=min(delay, 0.5))
                    continue
                heapq.heappop(self._heap)
            status = self._status(probe)
            probe.polls += 1
            if status in FINAL:
                probe.seen_at, probe.status = time.time(), status
                with self._lock:
                    self.done.append(probe)
                continue
            probe.wait = min(probe.wait * 1.5, MAX_POLL)
            probe.next_poll = time.time() + probe.wait
            self.add(probe)

    def _status(self, probe: Probe) -> str | None:
        path = f"/v1/Services/{self._service_sid}/Notifications/{probe.sid}/Deliveries"
        response = self._client.get(path)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
        rows = response.json()["deliveries"]
        return rows[0]["status"] if rows else None


def run_probes(
    client: Any, poller: Poller, service_sid: str, args: argparse.Namespace, until: float
) -> None:
    started = time.monotonic()
    for number in range(args.probes):
        # On a fixed schedule from the first probe, so a slow POST does not stretch the run.
        delay = started + number * args.interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.time() >= until:
            print(f"  deadline: probe {number + 1} and later not posted")
            break
        posted_at = time.time()
        begun = time.perf_counter()
        response = client.post(
            f"/v1/Services/{service_sid}/Notifications",
            data={"Identity": "b-user", "Body": f"probe {number + 1}"},
        )
        created = time.perf_counter() - begun
        sid = _created(response)["sid"]
        poller.add(Probe(time.time() + FIRST_POLL, number + 1, posted_at, created, sid))


def busy_cpu_seconds() -> float:
    """CPU time all processes used, machine-wide (/proc/stat: everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# One tree x database.


def run_one(tree: Tree, kind: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    import httpx
    from cryptography.fernet import Fernet

    from notify_server.db import make_engine

    if kind == "sqlite":
        database_url = f"sqlite:///{workdir / f'fairness-{tree.name}.db'}"
    else:
        database_url = args.postgres_url[tree.name]
    print(
        f"\n== {tree.name} ({tree.commit}{', uncommitted changes' if tree.dirty else ''})"
        f" x {kind}: {database_url}"
    )
    load_before = os.getloadavg()
    reset_database(database_url)
    engine = make_engine(database_url)
    env = tree_env(tree, database_url, Fernet.generate_key().decode())
    result: dict[str, Any] = {
        "tree": tree.name,
        "commit": tree.commit,
        "dirty": tree.dirty,
        "database": kind,
        "bindings": args.bindings,
        "load_before": load_before,
    }
    account_a, imported = create_account(tree, env, "fan-out A")
    account_b, _ = create_account(tree, env, "probe B")
    print(f"  the {tree.name} CLI ran {imported}")
    log_path = workdir / f"server-{tree.name}-{kind}.log"
    with (
        DeadEndpoint() as dead,
        notify_server(tree, env, log_path, args.pin) as server,
        httpx.Client(
            base_url=server.base_url,
            auth=(account_a["sid"], account_a["auth_token"]),
            timeout=POST_TIMEOUT,
        ) as client_a,
        httpx.Client(
            base_url=server.base_url,
            auth=(account_b["sid"], account_b["auth_token"]),
            timeout=60,
        ) as client_b,
    ):
        print(f"  the server (pid {server.process.pid}) runs {server.imported}")
        result["server_imported"] = server.imported
        service_a = _created(
            client_a.post(
                "/v1/Services",
                data={
                    "FriendlyName": "fan-out A",
                    "DeliveryCallbackUrl": dead.url,
                    "DeliveryCallbackEnabled": "true",
                },
            )
        )
        service_b = _created(client_b.post("/v1/Services", data={"FriendlyName": "probe B"}))
        _created(
            client_b.post(
                f"/v1/Services/{service_b['sid']}/Bindings",
                data={"Identity": "b-user", "BindingType": "apn", "Address": secrets.token_hex(32)},
            )
        )
        seconds = seed_bindings(
            engine, account_a["sid"], service_id(engine, service_a["sid"]), args.bindings
        )
        print(
            f"  seeded {args.bindings:,} untagged apn bindings for A in {seconds:.1f} s (SQLAlchemy"
            f" Core, {INSERT_BATCH:,} a transaction); B has 1 binding (create-binding over HTTP);"
            f" A's DeliveryCallbackUrl is {dead.url} (accepts, never answers)"
        )
        if kind != "sqlite":
            from sqlalchemy import text

            with engine.begin() as conn:
                conn.execute(text("ANALYZE"))
        if open_rows(engine):
            raise RuntimeError("deliveries are open before A posted")

        pg_name = database_url.rsplit("/", 1)[-1].split("?")[0] if kind != "sqlite" else None
        cpu_before = cpu_seconds(server.process.pid)
        wait_before = run_queue_seconds(server.process.pid)
        busy_before, own_before = busy_cpu_seconds(), own_cpu_seconds()
        pg_before = postgres_cpu_seconds(pg_name) if pg_name else 0.0
        a_posted_at = time.time()
        begun = time.perf_counter()
        response = client_a.post(
            f"/v1/Services/{service_a['sid']}/Notifications",
            data={"Tag": "all", "Body": "one notification, many devices"},
        )
        a_created = time.perf_counter() - begun
        a_sid = _created(response)["sid"]
        a_id = notification_id(engine, a_sid)
        until = a_posted_at + args.deadline
        print(f"  A's Tag=all notification: 201 in {a_created * 1000:,.0f} ms")

        poller = Poller(
            server.base_url, (account_b["sid"], account_b["auth_token"]), service_b["sid"], until
        )
        try:
            run_probes(client_b, poller, service_b["sid"], args, until)
        except BaseException:
            poller.finish(abandon=True)
            raise
        probes = poller.finish()
        if poller.error:
            raise RuntimeError(f"polling B's deliveries failed: {poller.error}")

        remaining = open_rows(engine)
        while remaining and time.time() < until:  # bounded by --deadline
            if server.process.poll() is not None:
                raise RuntimeError(f"notify-server died; see {log_path}")
            time.sleep(1.0)
            remaining = open_rows(engine)
        a_finished = remaining == 0
        run_end = time.time()
        server_cpu = cpu_seconds(server.process.pid) - cpu_before
        server_wait = run_queue_seconds(server.process.pid) - wait_before
        pg_cpu = postgres_cpu_seconds(pg_name) - pg_before if pg_name else 0.0
        # What the rest of the machine (other engineers' work) used meanwhile.
        others = busy_cpu_seconds() - busy_before - server_cpu - pg_cpu
        others -= own_cpu_seconds() - own_before
        dead_stats = dead.stats()
    engine_figures = _figures(engine, a_id, a_posted_at, probes)
    engine.dispose()
    log_lines = log_path.read_text().splitlines()
    span = run_end - a_posted_at
    result.update(
        a_created_seconds=a_created,
        a_finished=a_finished,
        a_open_at_end=remaining,
        dead_endpoint=dead_stats,
        server_cpu_share=server_cpu / span,
        server_run_queue_share=server_wait / span,
        postgres_cpu_share=pg_cpu / span if pg_name else None,
        others_cpu_share=max(0.0, others) / span,
        load_after=os.getloadavg(),
        server_log_errors=sum('"level":"error"' in line for line in log_lines),
        server_log_callback_warnings=sum("delivery callback" in line for line in log_lines),
        **engine_figures,
    )
    _print_run(result)
    return result


def _figures(engine: Any, a_id: int, a_posted_at: float, probes: list[Probe]) -> dict[str, Any]:
    a_final = final_times(engine, a_id)
    b_rows: dict[str, float] = {}
    if probes:
        from sqlalchemy import bindparam, text

        with engine.connect() as conn:
            query = text(
                "SELECT n.sid, d.date_updated FROM deliveries d"
                " JOIN notifications n ON n.id = d.notification_id"
                " WHERE n.sid IN :sids AND d.status IN ('sent', 'failed')"
            ).bindparams(bindparam("sids", expanding=True))
            for sid, updated in conn.execute(query, {"sids": [p.sid for p in probes]}):
                b_rows[sid] = epoch(updated)
    per_probe = []
    for p in probes:
        final_at = b_rows.get(p.sid)
        per_probe.append(
            {
                "probe": p.number,
                "sid": p.sid,
                "posted_after_a_s": p.posted_at - a_posted_at,
                "created_ms": p.created_seconds * 1000,
                "status": p.status,
                # POST sent -> the GET that saw the row final (what B's client sees).
                "seen_latency_s": (p.seen_at - p.posted_at) if p.seen_at else None,
                # POST sent -> the worker recorded the row final (microseconds, no poll delay).
                "final_latency_s": (final_at - p.posted_at) if final_at else None,
                "polls": p.polls,
                # A's rows final at the moment this probe's row became final.
                "a_final_rows_then": bisect.bisect_right(a_final, final_at) if final_at else None,
            }
        )
    figures: dict[str, Any] = {
        "probes": per_probe,
        "a_final_rows": len(a_final),
        "a_statuses": statuses(engine, a_id),
    }
    if a_final:
        figures["a_all_final_after_s"] = a_final[-1] - a_posted_at
        figures["a_deliveries_per_second"] = len(a_final) / max(a_final[-1] - a_posted_at, 1e-9)
    return figures


def latency_stats(run: dict[str, Any], key: str, deadline: float) -> dict[str, Any]:
    """Median, p90 and max of B's latencies; a probe never seen final counts as its wait until
    the deadline and makes the figure a lower bound ("censored")."""
    values: list[tuple[float, bool]] = []
    for p in run["probes"]:
        if p[key] is not None:
            values.append((p[key], False))
        else:
            values.append((deadline - p["posted_after_a_s"], True))
    if not values:
        return {}
    values.sort()
    stats: dict[str, Any] = {"count": len(values), "unfinished": sum(c for _, c in values)}
    for name, share in (("p50", 0.5), ("p90", 0.9), ("max", 1.0)):
        index = min(len(values) - 1, max(0, round(share * (len(values) - 1))))
        stats[name], stats[f"{name}_censored"] = values[index]
    # The plain median of the measured ones, for the record.
    measured = [v for v, c in values if not c]
    stats["p50_of_measured"] = percentile(measured, 0.5) if measured else None
    return stats


def _seconds(stats: dict[str, Any], name: str) -> str:
    if name not in stats:
        return "-"
    return (">" if stats[f"{name}_censored"] else "") + f"{stats[name]:.3f}"


def _print_run(r: dict[str, Any]) -> None:
    for p in r["probes"]:
        seen = f"{p['seen_latency_s']:.3f} s" if p["seen_latency_s"] is not None else "not final"
        final = f"{p['final_latency_s']:.3f} s" if p["final_latency_s"] is not None else "-"
        then = p["a_final_rows_then"]
        print(
            f"    probe {p['probe']:>2} at +{p['posted_after_a_s']:6.2f} s: 201 in"
            f" {p['created_ms']:6.1f} ms, seen final {seen} (row final {final}),"
            f" A's rows final then: {then if then is not None else '-':>}"
        )
    if r["a_finished"]:
        print(
            f"  A: all {r['a_final_rows']:,} rows final {r['a_all_final_after_s']:.1f} s after the"
            f" POST: {r['a_deliveries_per_second']:,.0f} deliveries/s; statuses {r['a_statuses']}"
        )
    else:
        print(
            f"  A: UNFINISHED: {r['a_final_rows']:,} rows final, {r['a_open_at_end']:,} still open"
            f" at the deadline; statuses {r['a_statuses']}"
        )
    d = r["dead_endpoint"]
    print(
        f"  dead endpoint: at most {d['max_held']} connection(s) held at once, {d['accepted']}"
        f" accepted, {d['requests']} callback POST(s) read and never answered;"
        f" server log: {r['server_log_callback_warnings']} callback warning(s),"
        f" {r['server_log_errors']} error(s)"
    )
    print(
        f"  server CPU {100 * r['server_cpu_share']:.0f}% of a core (runnable but waiting"
        f" {100 * r['server_run_queue_share']:.0f}%)"
        + (
            f", PostgreSQL backends {100 * r['postgres_cpu_share']:.0f}%"
            if r["postgres_cpu_share"] is not None
            else ""
        )
        + f"; other processes {100 * r['others_cpu_share']:.0f}% of a core; load average"
        f" {r['load_before'][0]:.2f} -> {r['load_after'][0]:.2f}"
    )


def print_table(results: list[dict[str, Any]], deadline: float) -> dict[str, Any]:
    print("\n== B's latency while A fans out (POST sent -> GET sees the row final)")
    header = (
        f"{'tree':<9} {'database':<10} {'B p50 s':>9} {'B p90 s':>9} {'B max s':>9}"
        f" {'(row p50)':>9} {'A 201 ms':>9} {'A deliv/s':>9} {'A final s':>10} {'dead conns':>10}"
        f" {'others':>7}"
    )
    print(header)
    for r in results:
        if "error" in r:
            print(f"{r['tree']:<9} {r['database']:<10} FAILED: {r['error'][:80]}")
            continue
        seen = latency_stats(r, "seen_latency_s", deadline)
        final = latency_stats(r, "final_latency_s", deadline)
        r["b_seen_latency"], r["b_final_latency"] = seen, final
        a_final = f"{r['a_all_final_after_s']:.1f}" if r["a_finished"] else "unfinished"
        rate = r.get("a_deliveries_per_second")
        print(
            f"{r['tree']:<9} {r['database']:<10} {_seconds(seen, 'p50'):>9}"
            f" {_seconds(seen, 'p90'):>9} {_seconds(seen, 'max'):>9}"
            f" {_seconds(final, 'p50'):>9} {r['a_created_seconds'] * 1000:>9,.0f}"
            f" {rate or 0:>9,.0f} {a_final:>10} {r['dead_endpoint']['max_held']:>10}"
            f" {100 * r['others_cpu_share']:>6.0f}%"
        )
    ratios: dict[str, Any] = {}
    for kind in dict.fromkeys(r["database"] for r in results):
        pair = {r["tree"]: r for r in results if r["database"] == kind and "error" not in r}
        if {"current", "baseline"} <= pair.keys():
            base = pair["baseline"]["b_seen_latency"]
            cur = pair["current"]["b_seen_latency"]
            ratio = base["p50"] / cur["p50"] if cur.get("p50") else None
            ratios[kind] = {
                "median_ratio": ratio,
                "lower_bound": base["p50_censored"],
                "upper_bound": cur["p50_censored"],
            }
            if ratio is not None:
                mark = ">=" if base["p50_censored"] else ("<=" if cur["p50_censored"] else "")
                print(f"B's median latency, baseline / current, {kind}: {mark}{ratio:,.1f}x")
    print(
        "dead conns = most connections the dead endpoint held at once; others = CPU used by other"
        f" processes during the run, in % of one core ({os.cpu_count()} CPUs; over ~20% the"
        f" machine was busy); '>' = a probe not final within the {deadline:.0f} s deadline"
        " (a lower bound)"
    )
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bindings", type=int, default=100_000, help="A's bindings")
    parser.add_argument("--probes", type=int, default=20, help="B's notifications")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between probes")
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument("--trees", default="current,baseline")
    parser.add_argument("--baseline", default=BASELINE_COMMIT, help="the baseline commit")
    parser.add_argument("--worktree", type=Path, default=DEFAULT_WORKTREE)
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES["current"])
    parser.add_argument("--postgres-base-url", default=DEFAULT_POSTGRES["baseline"])
    parser.add_argument(
        "--deadline", type=float, default=600.0, help="seconds from A's POST, per run"
    )
    parser.add_argument("--json", type=Path, default=None, help="default bench/results/...")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, SQLite)")
    parser.add_argument("--keep-worktree", action="store_true")
    parser.add_argument("--no-pin", dest="pin", action="store_false", help="do not use taskset")
    args = parser.parse_args(argv)
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    if set(databases) - {"sqlite", "postgresql"}:
        parser.error("--databases takes sqlite and/or postgresql")
    trees = [t.strip() for t in args.trees.split(",") if t.strip()]
    if not trees or set(trees) - {"current", "baseline"}:
        parser.error("--trees takes current and/or baseline")
    if args.bindings < 1 or args.probes < 1 or args.interval < 0 or args.deadline <= 0:
        parser.error("--bindings and --probes must be positive, --interval and --deadline not")
    args.postgres_url = {"current": args.postgres_url, "baseline": args.postgres_base_url}
    if args.postgres_url["current"] == args.postgres_url["baseline"] and "postgresql" in databases:
        parser.error("the two trees need two PostgreSQL databases")
    if args.pin and ((os.cpu_count() or 1) < 2 or not shutil.which("taskset")):
        args.pin = False
    if args.pin:
        # The bench (poster, poller, dead endpoint) stays off the server's core.
        os.sched_setaffinity(0, {BENCH_CPU})
    # SIGTERM unwinds like Ctrl-C, so every child is stopped by the context managers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Progress shows as it happens when the output goes to a file (a run in the background).
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]

    import notify_server

    print(f"bench process (migrations, seeding): notify_server from {notify_server.__file__}")
    print(
        f"A: {args.bindings:,} bindings, Tag=all, dead DeliveryCallbackUrl; B: {args.probes} probes"
        f" every {args.interval:g} s; deadline {args.deadline:.0f} s; pinned="
        f"{'server CPU 0, bench CPU 1' if args.pin else 'no'};"
        f" load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(SCHEMA_NOTE)
    workdir = Path(tempfile.mkdtemp(prefix="notify-fairness-"))
    results: list[dict[str, Any]] = []
    keep = args.keep
    made: dict[str, Tree] = {}
    try:
        if "current" in trees:
            made["current"] = current_tree()
        if "baseline" in trees:
            made["baseline"] = baseline_tree(args.worktree, args.baseline)
            print(f"baseline: {args.baseline} checked out at {args.worktree}")
        for kind in databases:
            for name in trees:
                try:
                    results.append(run_one(made[name], kind, args, workdir))
                    keep = keep or bool(results[-1]["server_log_errors"])
                except Exception as exc:  # one run's failure (database, server): go on
                    print(f"  FAILED: {type(exc).__name__}: {str(exc)[:500]}")
                    log_path = workdir / f"server-{name}-{kind}.log"
                    if log_path.exists():
                        print("  server log, last lines:")
                        for line in log_path.read_text().splitlines()[-15:]:
                            print(f"    {line[:400]}")
                    results.append({"tree": name, "database": kind, "error": str(exc)[:2000]})
                    keep = True
    finally:
        if "baseline" in made and not args.keep_worktree:
            remove_worktree(args.worktree)
        if keep:
            print(f"kept {workdir} (server logs, SQLite files)")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    ratios = print_table(results, args.deadline)
    path = args.json or REPO / "bench" / "results" / f"fairness-{datetime.now():%Y-%m-%d}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "question": "B's delivery latency while A fans out to --bindings with a dead callback URL",
        "schema": SCHEMA_NOTE,
        "trees": {
            n: {"commit": t.commit, "dirty": t.dirty, "src": str(t.src)} for n, t in made.items()
        },
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "cpus": os.cpu_count(),
        "runs": results,
        "median_ratio_baseline_over_current": ratios,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"figures written to {path}")
    return 0 if all("error" not in r and r["a_finished"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
