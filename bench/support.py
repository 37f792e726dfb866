"""Helpers of http_bench.py for issue 8: the delay proxy, round-trip timing, deep-page seeding.

Everything here talks to 127.0.0.1 (or the database URL the bench was given) only.
"""

import os
import socket
import statistics
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

DELAYPROXY_SOURCE = Path("/work/shared/tools/delayproxy.c")


def ensure_tool(binary: str, package: str) -> None:
    """Install a Debian package (as root) when its binary is missing; exit when that fails."""
    if subprocess.run(["which", binary], capture_output=True, check=False).returncode == 0:
        return
    print(f"{binary} missing: apt-get install -y {package} ...", flush=True)
    subprocess.run(
        ["apt-get", "install", "-y", package], capture_output=True, timeout=600, check=False
    )
    if subprocess.run(["which", binary], capture_output=True, check=False).returncode != 0:
        sys.exit(f"{binary} is not installed and apt-get could not install {package}")


# --- ports ------------------------------------------------------------------------------------


class Ports:
    """Free TCP ports on 127.0.0.1, from a range when given (e.g. '18700-18799')."""

    def __init__(self, host: str, span: str | None) -> None:
        self.host = host
        if span:
            low, high = (int(p) for p in span.split("-", 1))
            self._candidates: list[int] | None = list(range(low, high + 1))
        else:
            self._candidates = None

    def take(self) -> int:
        if self._candidates is None:
            with socket.socket() as sock:
                sock.bind((self.host, 0))
                return int(sock.getsockname()[1])
        while self._candidates:
            port = self._candidates.pop(0)
            with socket.socket() as sock:
                try:
                    sock.bind((self.host, port))
                except OSError:
                    continue
                return port
        sys.exit("no free port left in --ports")


# --- CPU of a process tree (uvicorn --workers N forks its workers) -----------------------------


def tree_ticks(root: int) -> int:
    """utime + stime of `root` and every live descendant, in clock ticks."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with suppress(OSError), open(f"/proc/{entry}/stat") as stat:
            # Fields after the parenthesised command: ppid is the 2nd, utime/stime the 12th/13th.
            fields = stat.read().rsplit(")", 1)[1].split()
            parents[int(entry)] = int(fields[1])
            ticks[int(entry)] = int(fields[11]) + int(fields[12])
    total, wanted = 0, {root}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in wanted and pid not in wanted:
                wanted.add(pid)
                changed = True
    for pid in wanted:
        total += ticks.get(pid, 0)
    return total


# --- the delay proxy ----------------------------------------------------------------------------


def compile_delayproxy(workdir: Path) -> Path:
    binary = workdir / "delayproxy"
    if not DELAYPROXY_SOURCE.exists():
        sys.exit(f"--pg-delay-us needs {DELAYPROXY_SOURCE}")
    done = subprocess.run(
        ["gcc", "-O2", "-pthread", "-o", str(binary), str(DELAYPROXY_SOURCE)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        sys.exit(f"gcc failed on {DELAYPROXY_SOURCE}:\n{done.stderr}")
    return binary


def wait_listening(host: str, port: int, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{what} exited with {process.returncode}")
        with suppress(OSError), socket.create_connection((host, port), timeout=1):
            return
        time.sleep(0.05)
    sys.exit(f"{what} not listening on {host}:{port} after 10 s")


def libpq_params(url: str, port: int | None = None) -> dict[str, Any]:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    params: dict[str, Any] = {
        "host": parsed.host or "127.0.0.1",
        "port": port or parsed.port or 5432,
        "dbname": parsed.database,
        "user": parsed.username,
    }
    if parsed.password:
        params["password"] = parsed.password
    return {k: v for k, v in params.items() if v is not None}


def with_port(url: str, host: str, port: int) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(host=host, port=port).render_as_string(hide_password=False)


def select1_rtt_ms(url: str, port: int | None = None, count: int = 300) -> float:
    """Median time of `SELECT 1` on one autocommit connection: one round trip each."""
    import psycopg

    with psycopg.connect(**libpq_params(url, port), autocommit=True) as conn:
        for _ in range(20):
            conn.execute("SELECT 1").fetchone()
        times = []
        for _ in range(count):
            started = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


# --- deep pages -----------------------------------------------------------------------------------

# The template binding (made over HTTP, so every column is as the product writes it) is copied
# n-1 times with its own sid, identity, address and address_key; the tags JSON and the dates
# are the template's. The sid prefix 'BSdeeb' keeps the copies apart from random sids.
_COPY_COLUMNS = (
    "account_sid, service_id, binding_type, endpoint, endpoint_key, credential_sid,"
    " notification_protocol_version, tags, date_created, date_updated"
)
_SQLITE_COPY = f"""
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :copies)
INSERT INTO bindings (sid, identity, address, address_key, {_COPY_COLUMNS})
SELECT printf('BSdeeb%026x', i), 'deep-' || i, 'deep-address-' || i, printf('%064x', i),
       {_COPY_COLUMNS}
FROM bindings, n WHERE bindings.id = :template ORDER BY i
"""
_PG_COPY = f"""
INSERT INTO bindings (sid, identity, address, address_key, {_COPY_COLUMNS})
SELECT 'BSdeeb' || lpad(to_hex(i), 26, '0'), 'deep-' || i, 'deep-address-' || i,
       lpad(to_hex(i), 64, '0'), {_COPY_COLUMNS}
FROM bindings, generate_series(1, :copies) AS i WHERE bindings.id = :template ORDER BY i
"""
# binding_tags as create-binding writes them: one row per tag of the template's.
_TAG_COPY = """
INSERT INTO binding_tags (binding_id, tag, service_id)
SELECT b.id, t.tag, b.service_id
FROM bindings b JOIN binding_tags t ON t.binding_id = :template
WHERE b.service_id = :service AND b.id <> :template
"""


def seed_deep(url: str, template_sid: str, total: int, page_size: int, page: int) -> str:
    """Make the template's service hold `total` bindings; the PageToken of page `page`."""
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            template, service = conn.execute(
                text("SELECT id, service_id FROM bindings WHERE sid = :sid"), {"sid": template_sid}
            ).one()
            copy = _PG_COPY if engine.dialect.name == "postgresql" else _SQLITE_COPY
            conn.execute(text(copy), {"copies": total - 1, "template": template})
            conn.execute(text(_TAG_COPY), {"template": template, "service": service})
        if engine.dialect.name == "postgresql":
            # What autovacuum would do soon after a bulk load in production.
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("ANALYZE bindings"))
                conn.execute(text("ANALYZE binding_tags"))
        with engine.connect() as conn:
            # The id of the last row before the page: keyset tokens continue after it.
            before = conn.execute(
                text(
                    "SELECT id FROM bindings WHERE service_id = :service"
                    " ORDER BY id LIMIT 1 OFFSET :skip"
                ),
                {"service": service, "skip": (page - 1) * page_size - 1},
            ).scalar_one()
    finally:
        engine.dispose()
    return f"PT{before}"


# --- counting round trips -------------------------------------------------------------------------


class TurnCounter:
    """A TCP proxy (a thread with its own event loop) that counts round trips to the database.

    On each connection a round trip starts whenever the client sends after the server last
    spoke (or first): pipelined messages sent in several chunks count once, a reply in several
    chunks too. With one request at a time and no delivery worker, turns / requests is the
    database round trips of one request.
    """

    def __init__(self, host: str, port: int, target_host: str, target_port: int) -> None:
        import asyncio
        import threading

        self.turns = 0
        self._asyncio = asyncio
        self._target = (target_host, target_port)
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            server = self._loop.run_until_complete(asyncio.start_server(self._serve, host, port))
            ready.set()
            self._loop.run_forever()
            server.close()

        self._thread = threading.Thread(target=run, name="turn-counter", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            sys.exit("the round-trip counter did not start")

    async def _serve(self, client_reader: Any, client_writer: Any) -> None:
        asyncio = self._asyncio
        server_reader, server_writer = await asyncio.open_connection(*self._target)
        state = {"client_spoke_last": False}

        async def pump(reader: Any, writer: Any, from_client: bool) -> None:
            with suppress(OSError):
                while data := await reader.read(65536):
                    if from_client and not state["client_spoke_last"]:
                        self.turns += 1
                    state["client_spoke_last"] = from_client
                    writer.write(data)
                    await writer.drain()
            with suppress(OSError):
                writer.close()

        # Ended by stop(): return rather than end cancelled (asyncio would log that).
        with suppress(asyncio.CancelledError):
            await asyncio.gather(
                pump(client_reader, server_writer, True), pump(server_reader, client_writer, False)
            )

    def stop(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in self._asyncio.all_tasks() if t is not self._asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await self._asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        self._asyncio.run_coroutine_threadsafe(cancel_all(), self._loop)
        self._thread.join(5)
