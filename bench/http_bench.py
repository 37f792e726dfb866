"""notify-server against a bare FastAPI app, side by side, with wrk.

One run starts both servers pinned to CPU 0 (`taskset -c 0`) and drives them with wrk pinned
to CPU 1, alternating baseline and notify-server runs, then prints medians, the ratios the
performance issue asks for and PASS/FAIL against its targets. Only 127.0.0.1 is ever targeted.
See bench/README.md.

    .venv/bin/python bench/http_bench.py --repeats 3 --duration 10
"""

import argparse
import base64
import http.client
import json
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import support

HOST = "127.0.0.1"  # the only address this benchmark sends anything to
SERVER_CPU, LOAD_CPU = 0, 1
BENCH_DIR = Path(__file__).resolve().parent
START_TIMEOUT = 90.0  # a server (with its migrations) must answer /healthz by then
SEED_TIMEOUT = 300.0

# The targets.
CREATE_VS_BARE_POST = 1.0
FETCH_VS_BARE_POST = 1.5
LIST_VS_BARE_GET = 1.0  # a PageSize=50 page against the bare GET of one fixed body
DEEP_VS_FIRST = 1 / 1.1  # page 10,000 of 1,000,000 within 10% of page 1
PROXIED_VS_DIRECT = 0.8  # PostgreSQL at +1 ms RTT against ~0 ms
WORKERS_VS_ONE = 1.7  # --workers 2 against one process (scaled for other counts)
P99_LIMIT_MS = 50.0
P99_AT_CONNECTIONS = 32
# A run during which other processes used more than this share of a pinned core is noisy;
# --quiet-wait waits for both cores to be below QUIET_PCT before a run.
NOISY_PCT = 5.0
QUIET_PCT = 3.0


@dataclass(frozen=True)
class Variant:
    """One notify-server process: how it reaches the database, and its worker processes."""

    key: str  # "" for the direct one at --workers (the bare-endpoint targets apply to it)
    label: str
    proxied: bool
    workers: int

    @property
    def server(self) -> str:
        return f"notify@{self.key}" if self.key else "notify"


def variants(args: argparse.Namespace) -> list[Variant]:
    """The direct server at --workers, and the proxied and --compare-workers ones beside it."""
    routes = [False, True] if args.pg_delay_us is not None else [False]
    counts = [args.workers] + ([args.compare_workers] if args.compare_workers else [])
    out = []
    for workers in counts:
        for proxied in routes:
            keys, labels = [], []
            if proxied:
                keys.append("proxy")
                labels.append(f"+{2 * args.pg_delay_us / 1000:g}ms RTT")
            if workers != args.workers:
                keys.append(f"w{workers}")
                labels.append(f"w{workers}")
            out.append(Variant("-".join(keys), "".join(" " + x for x in labels), proxied, workers))
    return out


@dataclass(frozen=True)
class Scenario:
    name: str  # the base name, plus @variant for a server other than the base one
    base: str  # bare-post, create, bare-get, fetch, bare-list, list, deep-first, deep-page
    label: str
    server: str  # "bare", or a variant's server key
    kind: str  # "create" (one distinct binding per request) or "get"


# name, label, kind; each notify-server scenario runs on every variant (deep pages: base only).
BASE_SCENARIOS = (
    ("bare-post", "bare POST Form()+HTTPBasic", "create"),
    ("create", "create-binding", "create"),
    ("bare-get", "bare GET", "get"),
    ("fetch", "fetch-binding", "get"),
    ("bare-list", "bare list, Pydantic page of 50", "get"),
    ("list", "list-bindings PageSize=50", "get"),
    ("deep-first", "list 1M, page 1", "get"),
    ("deep-page", "list 1M, page 10,000", "get"),
)
BASE_NAMES = [name for name, _, _ in BASE_SCENARIOS]
DEEP = ("deep-first", "deep-page")
DEEP_PAGE = 10_000
PAGE_SIZE = 50


def scenarios(servers: list[Variant], only: list[str] | None, deep: bool) -> dict[str, Scenario]:
    """Every run of one repeat, in order: each baseline before its notify-server runs."""
    out = {}
    for name, label, kind in BASE_SCENARIOS:
        if only and name not in only or name in DEEP and not deep:
            continue
        if name.startswith("bare-"):
            out[name] = Scenario(name, name, label, "bare", kind)
            continue
        for variant in servers:
            if name in DEEP and variant.key:
                continue
            full = f"{name}@{variant.key}" if variant.key else name
            out[full] = Scenario(full, name, label + variant.label, variant.server, kind)
    return out


@dataclass
class Run:
    scenario: str
    connections: int
    repeat: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: dict[str, int] = field(default_factory=dict)
    # Share of the run's wall time: the server process's CPU, and CPU time on the server's
    # core / wrk's core that neither of them used (other processes: the figures are only
    # trustworthy when these stay near 0).
    server_cpu_pct: float = 0.0
    # The server's CPU time per request: barely moved by other load on the machine.
    server_us_per_request: float = 0.0
    others_server_core_pct: float = 0.0
    others_load_core_pct: float = 0.0


# --- CPU accounting (Linux /proc) -----------------------------------------------------------


def noise(run: Run) -> float:
    return max(run.others_server_core_pct, run.others_load_core_pct)


def core_busy_ticks() -> dict[int, int]:
    """Per CPU: clock ticks spent on anything but idle and iowait."""
    busy = {}
    with suppress(OSError), open("/proc/stat") as stat:
        for line in stat:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, values[:8])
                busy[int(name[3:])] = user + nice + system + irq + softirq + steal
    return busy


def wait_for_quiet(limit: float, cpus: tuple[int, ...]) -> float:
    """Wait (at most `limit` s) for a second in which these cores are nearly idle.

    The servers are idle between runs, so what this sees is other processes. Returns the
    last second's busiest core, in percent.
    """
    deadline = time.monotonic() + limit
    tick = os.sysconf("SC_CLK_TCK")
    while True:
        before, started = core_busy_ticks(), time.monotonic()
        time.sleep(1)
        elapsed = time.monotonic() - started
        after = core_busy_ticks()
        busiest = min(
            100.0, max(100 * (after.get(c, 0) - before.get(c, 0)) / tick / elapsed for c in cpus)
        )
        if busiest < QUIET_PCT or time.monotonic() >= deadline:
            return busiest


def children_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- processes ------------------------------------------------------------------------------


class Processes:
    """Every server this script starts, each in its own process group, stopped on any exit."""

    def __init__(self) -> None:
        self._running: list[subprocess.Popen] = []

    def start(self, argv: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen:
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._running.append(process)
        return process

    def stop_all(self) -> None:
        for process in self._running:
            if process.poll() is None:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in self._running:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self._running.clear()


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pinned(cpus: int | str, argv: list[str], pin: bool) -> list[str]:
    return ["taskset", "-c", str(cpus), *argv] if pin else argv


def server_cpus(workers: int) -> tuple[int, ...]:
    """One worker on the server's core; more spread over the server's and wrk's cores."""
    return (SERVER_CPU,) if workers == 1 else (SERVER_CPU, LOAD_CPU)


def wait_healthy(process: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited with {process.returncode}; its log:\n{log.read_text()}")
        with suppress(OSError):
            status, _ = request(port, "GET", "/healthz")
            if status == 200:
                return
        time.sleep(0.1)
    sys.exit(f"server on port {port} not healthy after {START_TIMEOUT:.0f} s:\n{log.read_text()}")


# --- HTTP set-up -----------------------------------------------------------------------------


def request(
    port: int,
    method: str,
    path: str,
    form: list[tuple[str, str]] | None = None,
    auth: str | None = None,
    connection: http.client.HTTPConnection | None = None,
) -> tuple[int, Any]:
    conn = connection or http.client.HTTPConnection(HOST, port, timeout=10)
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if auth:
        headers["Authorization"] = auth
    body = urllib.parse.urlencode(form) if form is not None else None
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    finally:
        if connection is None:
            conn.close()
    return response.status, json.loads(raw) if raw else None


def expect(status: int, body: Any, wanted: int, what: str) -> Any:
    if status != wanted:
        sys.exit(f"{what}: HTTP {status}, wanted {wanted}: {body}")
    return body


@dataclass(frozen=True)
class Targets:
    auth: str
    create_service: str
    list_service: str
    binding: str
    deep_service: str = ""
    deep_token: str = ""  # the PageToken of page DEEP_PAGE of the deep service


def prepare(port: int, auth: str, list_size: int) -> Targets:
    """Two services: one that create-binding fills, one holding `list_size` bindings."""
    created = expect(
        *request(port, "POST", "/v1/Services", [("FriendlyName", "bench-create")], auth),
        201,
        "create service",
    )
    listed = expect(
        *request(port, "POST", "/v1/Services", [("FriendlyName", "bench-list")], auth),
        201,
        "create service",
    )
    path = f"/v1/Services/{listed['sid']}/Bindings"
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    first = None
    deadline = time.monotonic() + SEED_TIMEOUT
    try:
        for i in range(list_size):
            if time.monotonic() > deadline:
                sys.exit(f"seeding {list_size} bindings took over {SEED_TIMEOUT:.0f} s")
            form = [
                ("Identity", f"seed-{i}"),
                ("BindingType", "apn"),
                ("Address", f"seed-address-{i}"),
                ("Tag", "alpha"),
                ("Tag", "beta"),
            ]
            binding = expect(*request(port, "POST", path, form, auth, conn), 201, "seed binding")
            first = first or binding["sid"]
    finally:
        conn.close()
    if first is None:
        sys.exit("--list-size must be at least 1")
    return Targets(auth, created["sid"], listed["sid"], first)


# --- wrk -------------------------------------------------------------------------------------

# Prints wrk's own figures as one parsable line (latencies in microseconds).
_DONE = """
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT %d %d %.1f %.1f %.1f %d %d %d %d %d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""

# Every request a new identity and address: the counter and a per-thread prefix (plus a
# per-run tag) make each one distinct, so none is an in-place update and no identity nears
# the 20-bindings limit. The baseline gets the very same bodies.
_CREATE = """
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
local counter = 0
local prefix = nil
local headers = {
  ["Authorization"] = "%(auth)s",
  ["Content-Type"] = "application/x-www-form-urlencoded",
}
function request()
  if prefix == nil then prefix = "%(tag)s-" .. tostring(tid) .. "-" end
  counter = counter + 1
  local id = prefix .. counter
  local body = "Identity=u-" .. id .. "&BindingType=apn&Address=a-" .. id
    .. "&Tag=alpha&Tag=beta"
  return wrk.format("POST", "%(path)s", headers, body)
end
"""

_GET = """
wrk.method = "GET"
wrk.headers["Authorization"] = "%(auth)s"
"""

_RESULT = re.compile(r"^BENCH_RESULT (.+)$", re.MULTILINE)


def scenario_path(name: str, targets: Targets) -> str:
    if name in ("bare-post", "create"):
        return f"/v1/Services/{targets.create_service}/Bindings"
    if name in ("bare-get", "fetch"):
        return f"/v1/Services/{targets.list_service}/Bindings/{targets.binding}"
    if name == "deep-first":
        return f"/v1/Services/{targets.deep_service}/Bindings?PageSize={PAGE_SIZE}"
    if name == "deep-page":
        return (
            f"/v1/Services/{targets.deep_service}/Bindings?PageSize={PAGE_SIZE}"
            f"&Page={DEEP_PAGE - 1}&PageToken={targets.deep_token}"
        )
    return f"/v1/Services/{targets.list_service}/Bindings?PageSize={PAGE_SIZE}"


def prepare_deep(port: int, auth: str, database_url: str, total: int) -> tuple[str, str]:
    """A service of `total` bindings (one over HTTP, the rest copied in SQL); its deep token."""
    service = expect(
        *request(port, "POST", "/v1/Services", [("FriendlyName", "bench-deep")], auth),
        201,
        "create service",
    )["sid"]
    form = [
        ("Identity", "deep-0"),
        ("BindingType", "apn"),
        ("Address", "deep-address-0"),
        ("Tag", "alpha"),
        ("Tag", "beta"),
    ]
    path = f"/v1/Services/{service}/Bindings"
    template = expect(*request(port, "POST", path, form, auth), 201, "deep template")["sid"]
    token = support.seed_deep(database_url, template, total, PAGE_SIZE, DEEP_PAGE)
    # The token must land where page DEEP_PAGE starts: row (DEEP_PAGE - 1) * PAGE_SIZE + 1,
    # which is copy number (DEEP_PAGE - 1) * PAGE_SIZE of the template (deep-0 is row 1).
    body = expect(
        *request(
            port,
            "GET",
            scenario_path("deep-page", Targets(auth, "", "", "", service, token)),
            auth=auth,
        ),
        200,
        "deep page",
    )
    first = body["bindings"][0]["identity"] if body["bindings"] else None
    wanted = f"deep-{(DEEP_PAGE - 1) * PAGE_SIZE}"
    if len(body["bindings"]) != PAGE_SIZE or first != wanted or not body["meta"]["next_page_url"]:
        sys.exit(f"page {DEEP_PAGE} starts at {first!r}, not {wanted!r}: {body['meta']}")
    return service, token


def wrk(
    scenario: Scenario,
    *,
    port: int,
    targets: Targets,
    connections: int,
    threads: int,
    seconds: int,
    workdir: Path,
    pin: bool,
    server_pid: int,
    cpus: tuple[int, ...] = (SERVER_CPU,),
) -> Run:
    path = scenario_path(scenario.base, targets)
    values = {"auth": targets.auth, "path": path, "tag": secrets.token_hex(4)}
    script = (_CREATE if scenario.kind == "create" else _GET) % values + _DONE
    script_file = workdir / f"{scenario.name.replace('@', '_')}.lua"
    script_file.write_text(script)
    argv = pinned(
        LOAD_CPU,
        [
            "wrk",
            "--latency",
            "-t",
            str(min(threads, connections)),
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--timeout",
            "5s",
            "-s",
            str(script_file),
            f"http://{HOST}:{port}{path}",
        ],
        pin,
    )
    busy_before, server_before = core_busy_ticks(), support.tree_ticks(server_pid)
    wrk_before, started = children_seconds(), time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    wall = time.monotonic() - started
    wrk_seconds = children_seconds() - wrk_before
    busy_after, server_after = core_busy_ticks(), support.tree_ticks(server_pid)
    match = _RESULT.search(done.stdout)
    if done.returncode != 0 or match is None:
        sys.exit(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    fields = match[1].split()
    requests_, micros = int(fields[0]), int(fields[1])
    kinds = ("connect", "read", "write", "status", "timeout")
    errors = dict(zip(kinds, map(int, fields[5:]), strict=True))
    run = Run(
        scenario=scenario.name,
        connections=connections,
        repeat=-1,
        requests=requests_,
        seconds=micros / 1e6,
        rps=requests_ / (micros / 1e6),
        p50_ms=float(fields[2]) / 1000,
        p99_ms=float(fields[3]) / 1000,
        max_ms=float(fields[4]) / 1000,
        errors={k: v for k, v in errors.items() if v},
    )
    tick = os.sysconf("SC_CLK_TCK")
    server_seconds = (server_after - server_before) / tick

    def core_seconds(cpu: int) -> float:
        return (busy_after.get(cpu, 0) - busy_before.get(cpu, 0)) / tick

    run.server_cpu_pct = 100 * server_seconds / wall
    run.server_us_per_request = 1e6 * server_seconds / max(1, run.requests)
    if pin and LOAD_CPU in cpus:
        # The server shares wrk's core: only the two cores' sum can be told apart.
        both = core_seconds(SERVER_CPU) + core_seconds(LOAD_CPU) - server_seconds - wrk_seconds
        run.others_server_core_pct = run.others_load_core_pct = 100 * max(0.0, both) / wall
    elif pin:
        run.others_server_core_pct = (
            100 * max(0.0, core_seconds(SERVER_CPU) - server_seconds) / wall
        )
        run.others_load_core_pct = 100 * max(0.0, core_seconds(LOAD_CPU) - wrk_seconds) / wall
    return run


# --- profile --------------------------------------------------------------------------------


def py_spy() -> str:
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy")
    return found


def profile(scenario: Scenario, *, out: Path, pin: bool, **common: Any) -> Path:
    """One more wrk run with py-spy sampling the server (on wrk's core): not in the figures.

    Only the thread holding the GIL is sampled (`--gil`): the database threads wait in
    psycopg's C poll, which py-spy would otherwise count as busy. Worker processes too.
    """
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{scenario.name.replace('@', '_')}.txt"
    seconds: int = common.pop("seconds")
    wrk(scenario, seconds=min(seconds, 2), pin=pin, **common)
    argv = [
        py_spy(),
        "record",
        "--pid",
        str(common["server_pid"]),
        "--rate",
        "250",
        "--duration",
        str(seconds),
        "--nonblocking",
        "--subprocesses",
        "--gil",
        "--format",
        "raw",
        "--output",
        str(target),
    ]
    with (out / "py-spy.log").open("ab") as log:
        spy = subprocess.Popen(
            pinned(LOAD_CPU, argv, pin),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wrk(scenario, seconds=seconds + 1, pin=pin, **common)
            spy.wait(timeout=seconds + 30)
        finally:
            if spy.poll() is None:
                os.killpg(spy.pid, signal.SIGKILL)
                spy.wait(timeout=10)
    if not target.exists():
        sys.exit(f"py-spy wrote no profile; see {out / 'py-spy.log'}")
    return target


# --- report ----------------------------------------------------------------------------------


@dataclass
class Summary:
    rps: float
    p50_ms: float
    p99_ms: float
    runs: list[float]
    errors: int
    server_cpu_pct: float
    server_us_per_request: float
    others_pct: float  # the worst run's CPU taken by other processes on either core


def summarise(runs: list[Run], connections: int, order: list[str]) -> dict[str, Summary]:
    out = {}
    for name in order:
        mine = [r for r in runs if r.scenario == name and r.connections == connections]
        if mine:
            out[name] = Summary(
                rps=statistics.median(r.rps for r in mine),
                p50_ms=statistics.median(r.p50_ms for r in mine),
                p99_ms=statistics.median(r.p99_ms for r in mine),
                runs=[r.rps for r in mine],
                errors=sum(sum(r.errors.values()) for r in mine),
                server_cpu_pct=statistics.median(r.server_cpu_pct for r in mine),
                server_us_per_request=statistics.median(r.server_us_per_request for r in mine),
                others_pct=max(noise(r) for r in mine),
            )
    return out


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def ratios(servers: list[Variant]) -> list[tuple[str, str, float | None]]:
    """(numerator, denominator, target or None): the issue's checks, then the information."""
    out: list[tuple[str, str, float | None]] = [
        ("create", "bare-post", CREATE_VS_BARE_POST),
        ("fetch", "bare-post", FETCH_VS_BARE_POST),
        ("list", "bare-get", LIST_VS_BARE_GET),
        ("deep-page", "deep-first", DEEP_VS_FIRST),
        ("deep-first", "bare-get", None),
        ("fetch", "bare-get", None),
        ("list", "bare-list", None),
    ]

    def named(base: str, variant: Variant) -> str:
        return f"{base}@{variant.key}" if variant.key else base

    for a in servers:
        for b in servers:
            if a.proxied and not b.proxied and a.workers == b.workers:
                target = PROXIED_VS_DIRECT
            elif a.proxied == b.proxied and a.workers > b.workers:
                target = WORKERS_VS_ONE * a.workers / 2 / b.workers
            else:
                continue
            out += [(named(n, a), named(n, b), target) for n in ("create", "fetch")]
            out.append((named("list", a), named("list", b), None))
    return out


def report(
    runs: list[Run], args: argparse.Namespace, order: dict[str, Scenario], servers: list[Variant]
) -> list[dict]:
    checks: list[dict] = []
    width = max(30, *(len(s.label) + 1 for s in order.values()))
    for connections in args.connections:
        table = summarise(runs, connections, list(order))
        print(
            f"\n== {connections} connections: medians of {args.repeats} x {args.duration} s"
            f" (each after a {args.warmup} s warm-up) =="
        )
        print(
            f"{'scenario':<{width}}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'srv cpu':>9}"
            f"{'us/req':>8}{'others':>8}  each run (req/s)"
        )
        for name, s in table.items():
            each = " ".join(f"{r:,.0f}" for r in s.runs)
            flag = f"  !! {s.errors} socket errors/non-2xx" if s.errors else ""
            print(
                f"{order[name].label:<{width}}{s.rps:>8,.0f}{s.p50_ms:>9.2f}{s.p99_ms:>9.2f}"
                f"{s.server_cpu_pct:>8.0f}%{s.server_us_per_request:>8.0f}{s.others_pct:>7.0f}%"
                f"  {each}{flag}"
            )
        if any(s.others_pct > NOISY_PCT for s in table.values()):
            print(
                f"  note: other processes took over {NOISY_PCT:.0f}% of a pinned core during"
                " some runs ('others'): those figures are noisy, latency tails most of all"
            )

        print(f"\n{'ratio of req/s':<{width}}{'value':>8}{'by CPU':>8}  target")
        for a, b, target in ratios(servers):
            if a not in table or b not in table:
                continue
            value = table[a].rps / table[b].rps
            # The same ratio from server CPU per request: what it would be without other load.
            by_cpu = table[b].server_us_per_request / max(table[a].server_us_per_request, 1e-9)
            name = f"{a} / {b}"
            if target is None:
                print(f"{name:<{width}}{value:>7.2f}x{by_cpu:>7.2f}x  (for information)")
                continue
            ok = value >= target
            print(f"{name:<{width}}{value:>7.2f}x{by_cpu:>7.2f}x  >= {target:.2f}x  {verdict(ok)}")
            checks.append(
                {
                    "check": f"{name} >= {target:.2f}x",
                    "connections": connections,
                    "ok": ok,
                    "value": round(value, 3),
                }
            )
        if connections == P99_AT_CONNECTIONS:
            for name in ("create", "fetch", "list", *DEEP):
                if name not in table:
                    continue
                p99 = table[name].p99_ms
                ok = p99 < P99_LIMIT_MS
                print(
                    f"{'p99 ' + order[name].label:<{width}}{p99:>5.1f} ms  < {P99_LIMIT_MS:.0f} ms"
                    f"  {verdict(ok)}"
                )
                checks.append(
                    {
                        "check": f"{name} p99 < {P99_LIMIT_MS} ms",
                        "connections": connections,
                        "ok": ok,
                    }
                )
    if P99_AT_CONNECTIONS not in args.connections:
        print(f"\n(the p99 target is for {P99_AT_CONNECTIONS} connections, not measured here)")
    return checks


def access_log_lines(log: Path) -> list[str]:
    pattern = re.compile(r'"(GET|POST|DELETE|OPTIONS) /')
    return [line for line in log.read_text(errors="replace").splitlines() if pattern.search(line)]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in (
        "fastapi",
        "starlette",
        "pydantic",
        "uvicorn",
        "uvloop",
        "httptools",
        "sqlalchemy",
    ):
        with suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def code_under_test(env: dict[str, str]) -> str:
    """Which notify_server the server will import, and its git state (src/ may be mid-edit)."""
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            "import notify_server, os; print(os.path.dirname(notify_server.__file__))",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout.strip()
    if not found:
        return "notify_server not importable"
    git = ["git", "-C", found]
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    if not head:
        return f"notify_server from {found} (not a git checkout)"
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "."], capture_output=True, text=True, check=False
    ).stdout.strip()
    return f"notify_server from {found} at {head}{' + uncommitted changes' if dirty else ''}"


def redacted(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


# --- main ------------------------------------------------------------------------------------


def notify_server_argv() -> list[str]:
    script = Path(sys.executable).with_name("notify-server")
    return [str(script)] if script.exists() else [sys.executable, "-m", "notify_server.cli"]


@contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="notify-bench-"))
    try:
        yield path
    finally:
        if keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per scenario (default 3)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (10)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per run (2)")
    parser.add_argument(
        "--connections",
        type=int,
        nargs="+",
        default=[P99_AT_CONNECTIONS],
        help="wrk connection counts, e.g. --connections 32 8 (default 32)",
    )
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--database-url",
        help="default: a fresh SQLite file; or postgresql+psycopg://... (migrated by serve)",
    )
    parser.add_argument("--list-size", type=int, default=1000, help="bindings to list (1000)")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=BASE_NAMES,
        help="run only these scenarios, on every server variant (a ratio needs both sides)",
    )
    parser.add_argument(
        "--deep-size",
        type=int,
        default=1_000_000,
        help=f"bindings of the deep-page service, page 1 and page {DEEP_PAGE:,} listed"
        " (default 1,000,000; 0 = no deep pages)",
    )
    parser.add_argument(
        "--pg-delay-us",
        type=int,
        metavar="US",
        help="also run every notify-server scenario through delayproxy holding each chunk US"
        " microseconds each way (500 = +1 ms RTT), side by side with the direct runs",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="notify-server serve --workers (default 1)"
    )
    parser.add_argument(
        "--compare-workers",
        type=int,
        metavar="N",
        help="also run a notify-server with --workers N (on both cores) beside the first",
    )
    parser.add_argument(
        "--ports",
        metavar="LOW-HIGH",
        help="take every port this script listens on from this range (default: any free one)",
    )
    parser.add_argument(
        "--round-trips",
        type=int,
        default=5,
        metavar="SECONDS",
        help="PostgreSQL only: one-connection runs of this length on a server whose"
        " database connections go through a proxy that counts round trips (0 = off; default 5)",
    )
    parser.add_argument("--json", type=Path, help="also write every run and the checks here")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, db)")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="before each run, wait up to this long for both cores to be idle (default 0)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=0,
        help=f"redo a run in which other processes took over {NOISY_PCT:.0f}%% of a core,"
        " keeping the least noisy attempt (default 0)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="afterwards, profile create/fetch/list with py-spy into DIR (raw stacks + summary)",
    )
    parser.add_argument(
        "--profile-only",
        nargs="+",
        metavar="SCENARIO",
        default=["create", "fetch", "list"],
        help="with --profile: these scenarios, e.g. create@proxy (default create fetch list)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a target FAILs")
    parser.add_argument("--no-pin", action="store_true", help="do not use taskset")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.duration <= 0 or args.warmup < 0 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1, --duration > 0, --warmup >= 0")
    if args.retries < 0 or args.quiet_wait < 0:
        parser.error("--retries and --quiet-wait must be >= 0")
    if min(args.connections) < 1:
        parser.error("--connections must be >= 1")
    if args.workers < 1 or (args.compare_workers or 1) < 1 or args.deep_size < 0:
        parser.error("--workers and --compare-workers must be >= 1, --deep-size >= 0")
    if args.compare_workers == args.workers:
        args.compare_workers = None
    if args.deep_size and args.deep_size < DEEP_PAGE * PAGE_SIZE + 1:
        parser.error(f"--deep-size must be 0 or over {DEEP_PAGE * PAGE_SIZE:,}")
    if args.pg_delay_us is not None:
        url = args.database_url or ""
        if not url.startswith("postgresql"):
            parser.error("--pg-delay-us needs a PostgreSQL --database-url")
        if args.pg_delay_us < 0:
            parser.error("--pg-delay-us must be >= 0")
    return args


def measure_network(
    processes: Processes, args: argparse.Namespace, work: Path, ports: support.Ports
) -> tuple[dict[str, int], dict[str, float]]:
    """Start delayproxy in front of the database, at 0 us (what the hop itself costs) and at
    --pg-delay-us; time SELECT 1 direct and through each.
    Returns the proxies' ports and the round trips in ms, both by name."""
    url = args.database_url
    binary = support.compile_delayproxy(work)
    target = support.libpq_params(url)
    delays = {"hop": 0, "proxy": args.pg_delay_us}
    proxies = {}
    for name, delay in delays.items():
        port = ports.take()
        process = processes.start(
            [binary.as_posix(), HOST, str(port), target["host"], str(target["port"]), str(delay)],
            env=dict(os.environ),
            log=work / f"delayproxy-{name}.log",
        )
        support.wait_listening(HOST, port, process, "delayproxy")
        proxies[name] = port
    rtt = {"direct": support.select1_rtt_ms(url)}
    for name, port in proxies.items():
        rtt[name] = support.select1_rtt_ms(url, port)
    print("SELECT 1 round trip, median of 300 on one connection:")
    for name in ("direct", *delays):
        added = rtt[name] - rtt["direct"]
        wanted = 2 * delays.get(name, 0) / 1000
        flag = ""
        if name != "direct" and abs(added - wanted) > max(0.3, 0.3 * wanted):
            flag = "  !! not what the delay should add"
        print(
            f"  {name:<7} delay {delays.get(name, 0):>5} us: {rtt[name]:7.3f} ms"
            f"  (+{added:.3f} ms, wanted +{wanted:.3f}){flag}",
            flush=True,
        )
    return proxies, rtt


def round_trips(
    order: dict[str, Scenario], counter: support.TurnCounter, seconds: int, **common: Any
) -> None:
    """Database round trips per request, counted on the wire: one connection, on the probe
    server (no delivery worker) whose database connections go through the counter."""
    print(f"\n== database round trips per request, counted: 1 connection, {seconds} s each ==")
    for base in ("create", "fetch", "list", "deep-first", "deep-page"):
        if base not in order:
            continue
        wrk(order[base], seconds=1, connections=1, **common)  # the pool's connections open
        before = counter.turns
        run = wrk(order[base], seconds=seconds, connections=1, **common)
        turns = counter.turns - before
        print(
            f"{order[base].label:<30} {turns / max(1, run.requests):5.2f} round trips"
            f" ({turns:,} for {run.requests:,} requests, p50 {run.p50_ms:.2f} ms)",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    support.ensure_tool("wrk", "wrk")
    if args.pg_delay_us is not None:
        support.ensure_tool("gcc", "gcc")
    pin = not args.no_pin
    if pin and (
        shutil.which("taskset") is None or {SERVER_CPU, LOAD_CPU} - os.sched_getaffinity(0)
    ):
        print("warning: taskset or CPUs 0 and 1 unavailable; running unpinned", file=sys.stderr)
        pin = False

    processes = Processes()
    # Ctrl-C, kill and a closed terminal all stop the servers (even when started in the
    # background, where a shell leaves SIGINT ignored).
    signal.signal(signal.SIGINT, _raise_interrupt)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    runs: list[Run] = []
    servers_ = variants(args)
    order = scenarios(servers_, args.only, args.deep_size > 0)
    try:
        with workspace(args.keep) as work:
            database_url = args.database_url or f"sqlite:///{work / 'notify.db'}"
            account_sid = "AC" + secrets.token_hex(16)
            auth_token = secrets.token_hex(16)
            # None of the caller's NOTIFY_* settings leak in: the servers run as set here.
            env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_")}
            env |= {
                "NOTIFY_DATABASE_URL": database_url,
                "NOTIFY_ACCOUNT_SID": account_sid,
                "NOTIFY_AUTH_TOKEN": auth_token,
                "NOTIFY_SECRET_KEY_FILE": str(work / "notify-server.key"),
            }
            auth = "Basic " + base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()

            where = "server cpu0, wrk cpu1" if pin else "unpinned"
            print(
                f"notify-server bench: db={redacted(database_url)}, {where},"
                f" {' '.join(f'{k}={v}' for k, v in versions().items())}\n{code_under_test(env)}",
                flush=True,
            )
            with suppress(OSError):
                print(f"load before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
            ports = support.Ports(HOST, args.ports)
            rtt: dict[str, float] = {}
            proxy_url: dict[bool, str] = {}
            probing = database_url.startswith("postgresql") and args.round_trips > 0
            if args.pg_delay_us is not None:
                proxies, rtt = measure_network(processes, args, work, ports)
                proxy_url[True] = support.with_port(database_url, HOST, proxies["proxy"])
            if probing:
                target = support.libpq_params(database_url)
                counter_port = ports.take()
                counter = support.TurnCounter(HOST, counter_port, target["host"], target["port"])
                probe_url = support.with_port(database_url, HOST, counter_port)
            port_of = {"bare": ports.take()}
            logs = {"bare": work / "bare.log"}
            bare = processes.start(
                pinned(
                    SERVER_CPU,
                    [
                        sys.executable,
                        str(BENCH_DIR / "bare_app.py"),
                        "--port",
                        str(port_of["bare"]),
                    ],
                    pin,
                ),
                env=env,
                log=logs["bare"],
            )
            servers = {"bare": bare}
            wait_healthy(bare, port_of["bare"], logs["bare"])
            # One after another: the first migrates the database, the others find it done.
            # The probe (one worker, no delivery worker, through the counter) counts round
            # trips.
            probe = [Variant("probe", "", True, 1)] if probing else []
            for variant in servers_ + probe:
                key = variant.server
                port_of[key] = ports.take()
                logs[key] = work / f"{key.replace('@', '_')}.log"
                url = probe_url if variant.key == "probe" else proxy_url.get(variant.proxied)
                variant_env = env | ({"NOTIFY_DATABASE_URL": url} if url else {})
                cpus = ",".join(map(str, server_cpus(variant.workers)))
                servers[key] = processes.start(
                    pinned(
                        cpus,
                        [
                            *notify_server_argv(),
                            "serve",
                            "--port",
                            str(port_of[key]),
                            "--workers",
                            str(variant.workers),
                            "--log-level",
                            "warning",
                            *(["--no-worker"] if variant.key == "probe" else []),
                        ],
                        pin,
                    ),
                    env=variant_env,
                    log=logs[key],
                )
                wait_healthy(servers[key], port_of[key], logs[key])
                if variant.workers > 1:
                    # /healthz answers once one worker is up: give the others their start-up.
                    time.sleep(3)
            started = time.monotonic()
            targets = prepare(port_of["notify"], auth, args.list_size)
            print(
                f"seeded {args.list_size} bindings in {time.monotonic() - started:.1f} s",
                flush=True,
            )
            if any(s.base in DEEP for s in order.values()):
                started = time.monotonic()
                deep_service, deep_token = prepare_deep(
                    port_of["notify"], auth, database_url, args.deep_size
                )
                targets = Targets(
                    auth,
                    targets.create_service,
                    targets.list_service,
                    targets.binding,
                    deep_service,
                    deep_token,
                )
                print(
                    f"seeded {args.deep_size:,} bindings (page {DEEP_PAGE:,} = {deep_token})"
                    f" in {time.monotonic() - started:.1f} s",
                    flush=True,
                )

            names = list(order)
            cpus_of = {v.server: server_cpus(v.workers) for v in servers_}
            cpus_of["bare"] = (SERVER_CPU,)
            for repeat in range(args.repeats):
                for connections in args.connections:
                    for name in names if repeat % 2 == 0 else names[::-1]:
                        scenario = order[name]
                        common = {
                            "port": port_of[scenario.server],
                            "targets": targets,
                            "connections": connections,
                            "threads": args.threads,
                            "workdir": work,
                            "pin": pin,
                            "server_pid": servers[scenario.server].pid,
                            "cpus": cpus_of[scenario.server],
                        }
                        run = None
                        for attempt in range(1 + args.retries):
                            if args.quiet_wait > 0:
                                busy = wait_for_quiet(args.quiet_wait, (SERVER_CPU, LOAD_CPU))
                                if busy >= QUIET_PCT:
                                    print(f"  (cores still {busy:.0f}% busy; running anyway)")
                            if args.warmup > 0:
                                wrk(scenario, seconds=args.warmup, **common)
                            attempt_run = wrk(scenario, seconds=args.duration, **common)
                            if run is None or noise(attempt_run) < noise(run):
                                run = attempt_run
                            if noise(run) <= NOISY_PCT:
                                break
                            if attempt < args.retries:
                                print(
                                    f"  (noisy: others took {noise(attempt_run):.0f}% of a core;"
                                    f" again, {args.retries - attempt} tries left)",
                                    flush=True,
                                )
                        assert run is not None
                        run.repeat = repeat
                        runs.append(run)
                        errors = f" errors={run.errors}" if run.errors else ""
                        print(
                            f"  [{repeat + 1}/{args.repeats}] c={connections:<3} {name:<18}"
                            f" {run.rps:>8,.0f} req/s  p50 {run.p50_ms:6.2f} ms"
                            f"  p99 {run.p99_ms:6.2f} ms  server cpu {run.server_cpu_pct:3.0f}%"
                            f" {run.server_us_per_request:5.0f} us/req"
                            f"  others cpu0 {run.others_server_core_pct:3.0f}%"
                            f" cpu1 {run.others_load_core_pct:3.0f}%{errors}",
                            flush=True,
                        )
                    for process in servers.values():
                        if process.poll() is not None:
                            sys.exit(f"a server died (exit {process.returncode}); see --keep")

            checks = report(runs, args, order, servers_)
            if probing:
                round_trips(
                    order,
                    counter,
                    args.round_trips,
                    targets=targets,
                    threads=1,
                    workdir=work,
                    pin=pin,
                    server_pid=servers["notify@probe"].pid,
                    port=port_of["notify@probe"],
                )
                counter.stop()
            if args.profile:
                from pyspy_summary import summarise as summarise_profile

                print(f"\n== profiles (py-spy, {args.duration} s each) in {args.profile} ==")
                for name in args.profile_only:
                    if name not in order:
                        print(f"(no scenario {name} in this run)")
                        continue
                    scenario = order[name]
                    written = profile(
                        scenario,
                        out=args.profile,
                        pin=pin,
                        seconds=args.duration,
                        port=port_of[scenario.server],
                        targets=targets,
                        connections=max(args.connections),
                        threads=args.threads,
                        workdir=work,
                        server_pid=servers[scenario.server].pid,
                        cpus=cpus_of[scenario.server],
                    )
                    print(f"-- {name} --")
                    print(summarise_profile(written, top=15), flush=True)
            with suppress(OSError):
                print(f"load after: {Path('/proc/loadavg').read_text().strip()}", flush=True)
            processes.stop_all()
            # uvicorn's access log is silenced by --log-level warning (notify-server has no
            # access-log switch of its own): check that nothing was written per request.
            for server, log in logs.items():
                lines = access_log_lines(log)
                state = f"ON ({len(lines)} lines, e.g. {lines[0]!r})" if lines else "off"
                print(f"access log of {server}: {state}")
            if args.json:
                args.json.write_text(
                    json.dumps(
                        {
                            "versions": versions(),
                            "database": redacted(database_url),
                            "args": {k: str(v) for k, v in vars(args).items()},
                            "select1_rtt_ms": rtt,
                            "runs": [asdict(r) for r in runs],
                            "checks": checks,
                        },
                        indent=2,
                    )
                )
            return 1 if args.check and not all(c["ok"] for c in checks) else 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping servers", file=sys.stderr)
        return 130
    finally:
        processes.stop_all()


if __name__ == "__main__":
    sys.exit(main())
