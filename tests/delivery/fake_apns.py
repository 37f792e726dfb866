"""A fake APNs: a real HTTP/2 server (the `h2` library on asyncio, in a background thread) on
127.0.0.1. Cleartext it speaks HTTP/2 with prior knowledge (h2c); given a TLS context it does
TLS with ALPN h2, as Apple does. It records every request and answers per scripted rules:
by default 200 with the request's apns-id, or scripted answers per device token.

A client that does not open with the HTTP/2 preface gets 505 and is recorded as HTTP/1.1, so a
test asserting `http_version == "HTTP/2"` can fail."""

import asyncio
import datetime
import ipaddress
import json
import ssl
import threading
import time
import uuid
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import ConnectionTerminated, DataReceived, RequestReceived, StreamEnded
from h2.exceptions import ProtocolError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclass(frozen=True)
class Answer:
    status: int = 200
    reason: str | None = None
    # Drop the connection instead of answering (a reset, as a crashed front end does).
    reset: bool = False
    # Instead of echoing the request's apns-id / instead of {"reason": ...}: a provider's
    # malformed bytes.
    apns_id: str | None = None
    body: bytes | None = None


OK = Answer()


@dataclass(frozen=True)
class ApnsRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    http_version: str
    connection: int  # which TCP connection carried it (numbered from 1 per fake)
    alpn: str | None = None  # the protocol TLS negotiated; None in cleartext
    peer_subject: dict[str, str] = field(default_factory=dict)  # the client certificate's

    @property
    def token(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def json(self) -> Any:
        return json.loads(self.body)


class FakeApns:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self._lock = threading.Condition()
        self._requests: list[ApnsRequest] = []
        self._scripts: dict[str, deque[Answer]] = defaultdict(deque)
        self._connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self.url = ""

    def start(self) -> "FakeApns":
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._tls), self._loop
        ).result(timeout=10)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self._tls else 'http'}://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._scripts.clear()

    def script(self, token: str, *answers: Answer) -> None:
        """The next requests for `token` get these answers, in order; then 200 again."""
        with self._lock:
            self._scripts[token].extend(answers)

    @property
    def requests(self) -> list[ApnsRequest]:
        with self._lock:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> list[ApnsRequest]:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout):
                raise AssertionError(f"expected {count} requests, got {self._requests}")
            return list(self._requests)

    def _answer_for(self, request: ApnsRequest) -> Answer:
        with self._lock:
            self._requests.append(request)
            self._lock.notify_all()
            script = self._scripts.get(request.token)
            return script.popleft() if script else OK

    def _next_connection(self) -> int:
        with self._lock:
            self._connections += 1
            return self._connections

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self._next_connection()
        try:
            try:
                first = await reader.readexactly(len(PREFACE))
            except asyncio.IncompleteReadError as exc:
                first = exc.partial
            if first != PREFACE:
                await self._http1(number, first, reader, writer)
            else:
                await self._http2(number, first, reader, writer)
        except (ConnectionError, ProtocolError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _http2(
        self,
        number: int,
        first: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object else None
        peer = ssl_object.getpeercert() if ssl_object else None
        peer_subject = {k: v for rdn in (peer or {}).get("subject", ()) for k, v in rdn}
        conn = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        data = first
        while data:
            for event in conn.receive_data(data):
                if isinstance(event, RequestReceived):
                    streams[event.stream_id] = (dict(event.headers), bytearray())
                elif isinstance(event, DataReceived):
                    streams[event.stream_id][1].extend(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded):
                    headers, body = streams.pop(event.stream_id)
                    request = ApnsRequest(
                        method=headers.pop(":method"),
                        path=headers.pop(":path"),
                        headers={k: v for k, v in headers.items() if not k.startswith(":")},
                        body=bytes(body),
                        http_version="HTTP/2",
                        connection=number,
                        alpn=alpn,
                        peer_subject=peer_subject,
                    )
                    answer = self._answer_for(request)
                    if answer.reset:
                        writer.transport.abort()
                        return
                    _respond(conn, event.stream_id, request, answer)
                elif isinstance(event, ConnectionTerminated):
                    writer.write(conn.data_to_send())
                    return
            writer.write(conn.data_to_send())
            await writer.drain()
            data = await reader.read(65535)

    async def _http1(
        self,
        number: int,
        first: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        head = first
        while b"\r\n\r\n" not in head:
            chunk = await reader.read(65535)
            if not chunk:
                return
            head += chunk
        head, _, body = head.partition(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        method, path, version = request_line.split(" ", 2)
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self._answer_for(
            ApnsRequest(method, path, headers, body, version, number),
        )
        writer.write(
            b"HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-length: 0\r\n"
            b"connection: close\r\n\r\n"
        )
        await writer.drain()


def _respond(conn: H2Connection, stream_id: int, request: ApnsRequest, answer: Answer) -> None:
    # APNs echoes the request's apns-id, or makes one up.
    headers = [
        (":status", str(answer.status)),
        ("apns-id", answer.apns_id or request.headers.get("apns-id") or str(uuid.uuid4()).upper()),
    ]
    if answer.status == 200 and answer.body is None:
        conn.send_headers(stream_id, headers, end_stream=True)
        return
    error: dict[str, Any] = {"reason": answer.reason or "InternalServerError"}
    if answer.status == 410:
        error["timestamp"] = int(time.time() * 1000)
    body = json.dumps(error).encode() if answer.body is None else answer.body
    conn.send_headers(
        stream_id,
        [*headers, ("content-type", "application/json"), ("content-length", str(len(body)))],
    )
    conn.send_data(stream_id, body, end_stream=True)


# PKI for the fake and its clients.


def ec_key_pem() -> str:
    """An EC P-256 key as PKCS8 PEM: the form of an APNs .p8 token key."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def self_signed(
    subject: list[x509.NameAttribute],
    *,
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | None = None,
    ip: str | None = None,
    days: int = 30,
    not_before_days: int = -1,
) -> tuple[str, str]:
    """(certificate PEM, private key PEM in the traditional "RSA PRIVATE KEY" form)."""
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name(subject)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=not_before_days))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    if ip is not None:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]),
            critical=False,
        )
    certificate = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()
    return certificate.public_bytes(serialization.Encoding.PEM).decode(), key_pem


def apns_certificate(uid: str, **kwargs: Any) -> tuple[str, str]:
    """A push certificate as Apple issues them: the app's bundle id in the subject's UID."""
    return self_signed(
        [
            x509.NameAttribute(NameOID.USER_ID, uid),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Apple Push Services: {uid}"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        ],
        **kwargs,
    )


def server_tls_context(cert_file: str, key_file: str, client_ca: str) -> ssl.SSLContext:
    """TLS as APNs does it: ALPN h2; a client certificate is optional (token auth sends none)
    and, when sent, must be one `client_ca` vouches for."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2"])
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cadata=client_ca)
    return context
