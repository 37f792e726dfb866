"""The HTTP server's edge limits (notify_server/http_protocol.py), against a real
`notify-server serve` over raw sockets: a cap on the request head (431) and read timeouts for
the head and the body (408, or a plain close once a response has begun)."""

import base64
import json
import select
import socket
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from notify_server.db import make_engine
from notify_server.models import Base
from tests.servers import LiveServer, live_server

ACCOUNT_SID = "AC" + uuid.uuid4().hex
AUTH_TOKEN = uuid.uuid4().hex
AUTH = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode()
LIMIT = 32 * 1024  # the default NOTIFY_MAX_HEADER_BYTES
HEAD_TIMEOUT = 1.0
BODY_TIMEOUT = 0.5  # a body must also be complete within 6 of these: 3 s

TOO_LARGE = (
    b'{"code":20001,"message":"Request headers too large: at most 32768 bytes",'
    b'"more_info":"https://www.twilio.com/docs/errors/20001","status":431}'
)


def server_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        "NOTIFY_ACCOUNT_SID": ACCOUNT_SID,
        "NOTIFY_AUTH_TOKEN": AUTH_TOKEN,
        "NOTIFY_WORKER_ENABLED": "false",
        "NOTIFY_HEADER_TIMEOUT_SECONDS": str(HEAD_TIMEOUT),
        "NOTIFY_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        **extra,
    }


@pytest.fixture(scope="module", autouse=True)
def empty_tables_after(database_url: str) -> Iterator[None]:
    """The servers here create their configured account; later suites expect empty tables."""
    yield
    engine = make_engine(database_url)
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(database_url, env=server_env(tmp_path_factory.mktemp("edge"))) as server:
        yield server


def address(server: LiveServer) -> tuple[str, int]:
    host, port = server.base_url.removeprefix("http://").split(":")
    return host, int(port)


def connect(server: LiveServer) -> socket.socket:
    sock = socket.create_connection(address(server), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


# Bytes read past the end of a response (pipelined answers), per socket.
_unread: "weakref.WeakKeyDictionary[socket.socket, bytes]" = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket, timeout: float = 5.0) -> Response:
    """One response (Content-Length framed, as all of ours are), within `timeout`."""
    sock.settimeout(timeout)
    data = _unread.pop(sock, b"")
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside a response body"
        body += chunk
    _unread[sock] = body[length:]
    return Response(int(status_line.split()[1]), headers, body[:length])


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True if the server ends the connection (FIN or reset) within `timeout` and sends
    nothing more before it."""
    assert not _unread.pop(sock, b""), "more was sent"
    sock.settimeout(timeout)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def request(
    target: str = "/healthz", *headers: str, method: str = "GET", body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def padded_request(size: int) -> bytes:
    """A GET /healthz whose request line and headers (with the blank line) are `size` bytes."""
    bare = request("/healthz", "X-Pad: ")
    return request("/healthz", "X-Pad: " + "a" * (size - len(bare)))


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def healthz_answers(server: LiveServer) -> bool:
    with connect(server) as sock:
        sock.sendall(request())
        return read_response(sock).status == 200


class TestHeaderLimit:
    def test_a_40_kib_header_is_431_with_a_twilio_body_and_closes(self, server):
        with connect(server) as sock:
            sock.sendall(request("/healthz", "X-Pad: " + "a" * 40 * 1024))
            response = read_response(sock)
            assert response.status == 431
            assert response.body == TOO_LARGE
            assert response.headers["content-type"] == "application/json"
            assert response.headers["connection"] == "close"
            # The headers every response carries.
            assert response.headers["access-control-allow-origin"] == "*"
            assert response.headers["twilio-request-id"].startswith("RQ")
            assert closed_by_server(sock, 3)

    def test_exactly_at_the_limit_passes(self, server):
        assert len(padded_request(LIMIT)) == LIMIT
        with connect(server) as sock:
            sock.sendall(padded_request(LIMIT))
            assert read_response(sock).status == 200

    def test_one_byte_over_the_limit_is_431(self, server):
        with connect(server) as sock:
            sock.sendall(padded_request(LIMIT + 1))
            assert read_response(sock).status == 431

    def test_the_limit_counts_across_reads(self, server):
        # 36 KiB in 1 KiB pieces: no single read is over the limit, their sum is.
        data = padded_request(36 * 1024)
        with connect(server) as sock:
            for i in range(0, len(data), 1024):
                try:
                    sock.sendall(data[i : i + 1024])
                except (BrokenPipeError, ConnectionResetError):
                    break
                time.sleep(0.001)
            assert read_response(sock).status == 431

    def test_many_small_headers_count_too(self, server):
        headers = [f"X-H{i}: {'v' * 20}" for i in range(2000)]  # ~56 KiB
        with connect(server) as sock:
            sock.sendall(request("/healthz", *headers))
            assert read_response(sock).status == 431

    def test_a_long_url_counts(self, server):
        with connect(server) as sock:
            sock.sendall(request("/healthz?q=" + "a" * 40 * 1024))
            assert read_response(sock).status == 431

    def test_a_head_under_the_limit_with_a_body_in_the_same_read_passes(self, server):
        # One send of head + 64 KiB body: the read is over the head limit, the head is not.
        body = b"FriendlyName=" + b"a" * 64 * 1024
        with connect(server) as sock:
            sock.sendall(
                request(
                    "/v1/Services",
                    f"Authorization: {AUTH}",
                    "Content-Type: application/x-www-form-urlencoded",
                    method="POST",
                    body=body,
                )
            )
            response = read_response(sock)
        # Not 431: the app saw the request (and judged the name itself).
        assert response.status != 431
        assert response.json()["status"] == response.status

    def test_keep_alive_requests_each_get_the_full_limit(self, server):
        with connect(server) as sock:
            for _ in range(3):
                sock.sendall(padded_request(LIMIT - 100))
                assert read_response(sock).status == 200

    def test_pipelined_requests_each_get_the_full_limit(self, server):
        with connect(server) as sock:
            sock.sendall(padded_request(20 * 1024) * 3)
            assert [read_response(sock).status for _ in range(3)] == [200, 200, 200]

    def test_a_pipelined_head_over_the_limit_lets_the_earlier_response_finish(self, server):
        # The oversized head is parsed while the first request is still being answered: that
        # answer must arrive whole, and nothing may be written into the middle of it. (80 KiB:
        # the part of a pipelined head that shares a read with the end of the request before
        # it is not counted, so such a head may reach twice the limit.)
        with connect(server) as sock:
            sock.sendall(request() + padded_request(80 * 1024))
            first = read_response(sock)
            assert first.status == 200
            assert first.json() == {"status": "ok"}
            sock.settimeout(3)
            rest = _unread.pop(sock, b"")
            while chunk := sock.recv(65536):
                rest += chunk
        # Hung up straight after it, or (when the first answer was out before the big head
        # was read) answered 431 first.
        if rest:
            head, _, body = rest.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 431 "), rest[:200]
            assert body == TOO_LARGE

    def test_an_80_mb_header_line_is_refused_early_without_buffering(self, server):
        pid = server.process.pid
        assert healthz_answers(server)
        before = vm_rss_kib(pid)
        chunk = b"a" * 65536
        sent = 0
        answer = b""
        with connect(server) as sock:
            sock.setblocking(False)
            pending = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: "
            deadline = time.monotonic() + 10
            while sent < 80 * 1024 * 1024 and time.monotonic() < deadline:
                readable, writable, _ = select.select([sock], [sock], [], 1)
                if readable:
                    try:
                        data = sock.recv(65536)
                    except ConnectionResetError:
                        break
                    if not data:
                        break
                    answer += data
                    if TOO_LARGE in answer:
                        break
                if writable:
                    if not pending:
                        pending = chunk
                    try:
                        n = sock.send(pending)
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    sent += n
                    pending = pending[n:]
            after = vm_rss_kib(pid)
        assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:200]
        assert TOO_LARGE in answer
        # Early: what was sent before the answer came is the limit plus socket buffers.
        assert sent < 16 * 1024 * 1024, sent
        assert after - before < 20 * 1024, (before, after)
        assert healthz_answers(server)


class TestHeadTimeout:
    def test_a_slowloris_gets_408_within_the_timeout(self, server):
        with connect(server) as sock:
            started = time.monotonic()
            sock.sendall(b"G")
            response = None
            for byte in b"ET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 50:
                readable, _, _ = select.select([sock], [], [], 0.2)
                if readable:
                    response = read_response(sock)
                    break
                sock.sendall(bytes([byte]))
            elapsed = time.monotonic() - started
            assert response is not None, "still open after 10 s of trickling"
            assert response.status == 408
            assert response.json() == {
                "code": 20001,
                "message": "Request timed out: headers not received within 1 second",
                "more_info": "https://www.twilio.com/docs/errors/20001",
                "status": 408,
            }
            assert response.headers["connection"] == "close"
            assert HEAD_TIMEOUT - 0.1 < elapsed < HEAD_TIMEOUT + 1.0, elapsed
            assert closed_by_server(sock, 3)

    def test_a_trickle_of_blank_lines_is_cut_off_too(self, server):
        # llhttp skips CRLFs before a request without beginning one: counted all the same.
        with connect(server) as sock:
            started = time.monotonic()
            closed = False
            while time.monotonic() - started < 4:
                try:
                    sock.sendall(b"\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
                    break
                readable, _, _ = select.select([sock], [], [], 0.2)
                if readable:
                    closed = True
                    break
            assert closed, "still open after 4 s of blank lines"
            assert time.monotonic() - started < HEAD_TIMEOUT + 1.0

    def test_200_half_sent_requests_are_all_closed_and_others_are_served(self, server):
        socks = [connect(server) for _ in range(200)]
        try:
            for sock in socks:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            started = time.monotonic()
            # Meanwhile a normal request on a new connection is answered.
            assert healthz_answers(server)
            assert time.monotonic() - started < HEAD_TIMEOUT
            statuses = [read_response(sock, timeout=3).status for sock in socks]
            assert statuses == [408] * 200
            assert time.monotonic() - started < HEAD_TIMEOUT + 2.0
            assert all(closed_by_server(sock, 3) for sock in socks)
        finally:
            for sock in socks:
                sock.close()

    def test_a_connection_that_sends_nothing_is_closed_as_idle(self, server):
        # uvicorn's keep-alive timeout (5 s) governs it, without a response.
        with connect(server) as sock:
            started = time.monotonic()
            assert closed_by_server(sock, 8)
            assert 4 < time.monotonic() - started < 7

    def test_a_head_sent_in_slow_pieces_within_the_timeout_is_served(self, server):
        data = request()
        with connect(server) as sock:
            for piece in (data[:10], data[10:30], data[30:]):
                sock.sendall(piece)
                time.sleep(0.2)
            assert read_response(sock).status == 200

    def test_an_idle_keep_alive_connection_is_not_a_slow_head(self, server):
        # Between requests the head timer does not run (keep-alive's 5 s does).
        with connect(server) as sock:
            sock.sendall(request())
            assert read_response(sock).status == 200
            time.sleep(HEAD_TIMEOUT + 0.5)
            sock.sendall(request())
            assert read_response(sock).status == 200


def create_service_head(length: int, auth: str = AUTH) -> bytes:
    """The head of a create-service POST whose body (`length` bytes) is sent apart."""
    return (
        "POST /v1/Services HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: {auth}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def chunked_create_service_head() -> bytes:
    return create_service_head(0).replace(b"Content-Length: 0", b"Transfer-Encoding: chunked")


class TestBodyTimeout:
    def test_a_stalled_body_gets_408_and_is_closed(self, server):
        with connect(server) as sock:
            sock.sendall(create_service_head(100) + b"FriendlyName=stalled")
            started = time.monotonic()
            response = read_response(sock, timeout=5)
            elapsed = time.monotonic() - started
            assert response.status == 408
            assert response.json() == {
                "code": 20001,
                "message": "Request timed out: body stalled for 0.5 seconds",
                "more_info": "https://www.twilio.com/docs/errors/20001",
                "status": 408,
            }
            assert BODY_TIMEOUT - 0.1 < elapsed < BODY_TIMEOUT + 1.0, elapsed
            assert closed_by_server(sock, 3)
        assert healthz_answers(server)

    def test_a_chunked_body_that_stalls_mid_chunk_gets_408(self, server):
        head = chunked_create_service_head()
        with connect(server) as sock:
            sock.sendall(head + b"20\r\nFriendlyName=")
            response = read_response(sock, timeout=5)
            assert response.status == 408
            assert response.json()["message"] == "Request timed out: body stalled for 0.5 seconds"
            assert closed_by_server(sock, 3)

    def test_a_body_that_trickles_is_cut_off_after_its_total_time(self, server):
        # A byte every 0.2 s never stalls for 0.5 s, but 3 s is all a body gets.
        with connect(server) as sock:
            sock.sendall(create_service_head(100))
            started = time.monotonic()
            response = None
            for _ in range(40):
                readable, _, _ = select.select([sock], [], [], 0.2)
                if readable:
                    response = read_response(sock)
                    break
                sock.sendall(b"a")
            elapsed = time.monotonic() - started
            assert response is not None, "still open after 8 s of trickling"
            assert response.status == 408
            assert response.json()["message"] == (
                "Request timed out: body not received within 3 seconds"
            )
            assert 3 - 0.2 < elapsed < 3 + 1.0, elapsed

    def test_a_body_that_stalls_after_the_response_began_is_just_closed(self, server):
        # Wrong credentials: the app answers 401 without reading the body; then it stalls.
        bad = "Basic " + base64.b64encode(f"{ACCOUNT_SID}:wrong".encode()).decode()
        with connect(server) as sock:
            sock.sendall(create_service_head(100, auth=bad) + b"FriendlyName=x")
            response = read_response(sock)
            assert response.status == 401
            # No second (408) response: just the close.
            assert closed_by_server(sock, BODY_TIMEOUT + 2)

    def test_a_body_sent_in_pieces_within_the_timeout_is_served(self, server):
        body = b"FriendlyName=pieces"
        with connect(server) as sock:
            sock.sendall(create_service_head(len(body)))
            for i in range(0, len(body), 5):
                time.sleep(0.2)
                sock.sendall(body[i : i + 5])
            response = read_response(sock)
        assert response.status == 201, response.body
        assert response.json()["friendly_name"] == "pieces"


class TestNormalRequests:
    def test_a_post_with_a_body_creates_a_service(self, server):
        body = b"FriendlyName=edge"
        with connect(server) as sock:
            sock.sendall(
                create_service_head(len(body))
                + body
                + request("/v1/Services", f"Authorization: {AUTH}")
            )
            created = read_response(sock)
            listed = read_response(sock)
        assert created.status == 201, created.body
        assert created.json()["friendly_name"] == "edge"
        assert created.json()["account_sid"] == ACCOUNT_SID
        assert listed.status == 200
        assert created.json()["sid"] in [s["sid"] for s in listed.json()["services"]]

    def test_expect_100_continue_still_works(self, server):
        body = b"FriendlyName=continued"
        with connect(server) as sock:
            head = create_service_head(len(body))
            sock.sendall(head.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n"))
            sock.settimeout(3)
            assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
            time.sleep(0.2)
            sock.sendall(body)
            response = read_response(sock)
        assert response.status == 201, response.body
        assert response.json()["friendly_name"] == "continued"


MALFORMED = {
    "code": 20001,
    "message": "Invalid HTTP request: it could not be parsed as HTTP/1.1",
    "more_info": "https://www.twilio.com/docs/errors/20001",
    "status": 400,
}


class TestMalformedRequests:
    @pytest.mark.parametrize(
        "raw",
        [
            b"NOT HTTP AT ALL\r\n\r\n",
            b"GET /v1/Services/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /v1/Ser\tvices HTTP/1.1\r\nHost: x\r\n\r\n",
            b"POST /v1/Services HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            b"POST /v1/Services HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ],
        ids=[
            "not-http",
            "bytes-in-path",
            "tab-in-path",
            "length-abc",
            "length-negative",
            "no-colon",
            "nul-in-header",
            "h2-preface",
        ],
    )
    def test_what_cannot_be_parsed_gets_a_twilio_400_and_is_closed(self, server, raw):
        with connect(server) as sock:
            sock.sendall(raw)
            response = read_response(sock)
            assert response.status == 400
            assert response.json() == MALFORMED
            assert response.headers["content-type"] == "application/json"
            assert response.headers["access-control-allow-origin"] == "*"
            assert response.headers["twilio-request-id"].startswith("RQ")
            assert closed_by_server(sock, 3)
        assert healthz_answers(server)

    def test_a_bad_chunk_size_in_a_body_is_a_400_and_the_request_is_not_run(self, server):
        head = chunked_create_service_head()
        with connect(server) as sock:
            sock.sendall(head + b"zz\r\nFriendlyName=chunked\r\n0\r\n\r\n")
            response = read_response(sock)
            assert response.status == 400
            assert response.json() == MALFORMED
            assert closed_by_server(sock, 3)
        with connect(server) as sock:
            sock.sendall(request("/v1/Services?PageSize=1000", f"Authorization: {AUTH}"))
            listed = read_response(sock).json()
        assert "chunked" not in [s["friendly_name"] for s in listed["services"]]

    def test_a_malformed_request_after_a_good_one_lets_the_first_answer_finish(self, server):
        with connect(server) as sock:
            sock.sendall(request("/healthz") + b"NOT HTTP AT ALL\r\n\r\n")
            first = read_response(sock)
            assert first.status == 200
            assert first.body == b'{"status":"ok"}'
            # The second answer, if any, is the Twilio 400; nothing else comes.
            rest = _unread.pop(sock, b"")
            sock.settimeout(3)
            while chunk := sock.recv(65536):
                rest += chunk
            assert rest == b"" or rest.startswith(b"HTTP/1.1 400 Bad Request\r\n"), rest


def test_two_workers_start_and_enforce_the_limit(database_url, tmp_path):
    with live_server(database_url, workers=2, env=server_env(tmp_path)) as server:
        for _ in range(4):  # whichever worker accepts it
            with connect(server) as sock:
                sock.sendall(padded_request(LIMIT + 1))
                response = read_response(sock)
            assert response.status == 431
            assert response.body == TOO_LARGE
            assert healthz_answers(server)
        with connect(server) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            assert read_response(sock).status == 408
