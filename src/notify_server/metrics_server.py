"""`--metrics-port`: /metrics and /healthz on a listener of their own, served by threads, so a
scrape neither queues behind API requests nor runs on the event loop. It is also the `worker`'s
health port, with metrics turned off too (then /metrics is 404)."""

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson

from notify_server.config import Settings
from notify_server.errors import MethodNotAllowed, NotFound, TwilioError
from notify_server.metrics import CONTENT_TYPE_LATEST, Metrics, MetricsUnauthorized, check_bearer

log = logging.getLogger("notify_server.metrics")

_HEALTHY = b'{"status":"ok"}'


class _Listener(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], metrics: Metrics | None, reuse_port: bool) -> None:
        self.metrics = metrics
        # `serve --workers N`: every process listens on the same port, and each answers with
        # the sum over all processes (see metrics.py), so any of them will do. Otherwise a
        # second process on the port is a mistake, and binding fails.
        self.allow_reuse_port = reuse_port
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Listener
    protocol_version = "HTTP/1.1"
    server_version = "notify-server"
    sys_version = ""
    # Headers and body are two writes: with Nagle on, a keep-alive scraper's delayed ACK holds
    # the body back about 40 ms on every request after the first.
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        if path == "/healthz":
            self._answer(200, _HEALTHY, "application/json")
        elif path == "/metrics" and self.server.metrics is not None:
            metrics = self.server.metrics
            try:
                if metrics.token is not None:
                    check_bearer(self.headers.get("Authorization"), metrics.token)
            except MetricsUnauthorized as error:
                self._error(error)
                return
            self._answer(200, metrics.render(), CONTENT_TYPE_LATEST)
        else:
            not_found = NotFound()
            not_found.message = NotFound.message_for(path)
            self._error(not_found)

    def _not_allowed(self) -> None:
        self._error(MethodNotAllowed(self.command))

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed

    def _error(self, error: TwilioError) -> None:
        self._answer(error.status, orjson.dumps(error.body()), "application/json", error.headers())

    def _answer(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # Scrapes every few seconds would drown the access log; errors still go to debug.
        log.debug("metrics listener: " + format, *args)


class MetricsExporter:
    """What a process runs for its metrics: the gauge refresher and, with a metrics port,
    the listener. Both are threads; start() and stop() return at once."""

    def __init__(self, metrics: Metrics | None, settings: Settings) -> None:
        self.metrics = metrics
        self._address: tuple[str, int] | None = None
        if settings.metrics_port is not None:
            self._address = (settings.metrics_host or settings.host, settings.metrics_port)
        self._listener: _Listener | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int | None:
        return self._listener.server_address[1] if self._listener is not None else None

    def start(self) -> None:
        """Raises OSError when the metrics port cannot be bound."""
        if self._address is not None:
            shared = self.metrics is not None and self.metrics.shared_across_processes
            self._listener = _Listener(self._address, self.metrics, reuse_port=shared)
            self._thread = threading.Thread(
                target=self._listener.serve_forever, name="metrics-listener", daemon=True
            )
            self._thread.start()
        if self.metrics is not None:
            self.metrics.database.start()

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.shutdown()
            self._listener.server_close()
            self._listener = None
        if self.metrics is not None:
            self.metrics.database.stop()
