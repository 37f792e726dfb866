"""The container health check, `notify-server healthcheck` or, cheaper to start every few
seconds (it imports only the settings), `python -m notify_server.healthcheck`.

It asks this container's process for /healthz: `serve` answers on NOTIFY_PORT, `worker` only on
NOTIFY_METRICS_PORT, so that one is asked when nothing listens on the first. A container runs
one process: nothing else could answer in its place."""

import sys
import urllib.error
import urllib.request

from pydantic import ValidationError

from notify_server.config import Settings


def probe_health(settings: Settings, *, port: int | None = None, timeout: float = 2.0) -> int:
    listeners = [(settings.host, port or settings.port)]
    if settings.metrics_port is not None:
        listeners.append((settings.metrics_host or settings.host, settings.metrics_port))
    for host, listener_port in listeners:
        url = f"http://{_reachable(host)}:{listener_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                print(f"healthy: {url} answered {response.status}")
                return 0
        except urllib.error.HTTPError as error:
            print(f"notify-server: unhealthy: {url} answered {error.code}", file=sys.stderr)
            return 1
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            if not isinstance(reason, ConnectionRefusedError):
                print(f"notify-server: unhealthy: {url}: {reason}", file=sys.stderr)
                return 1
    ports = " or ".join(str(listener_port) for _, listener_port in listeners)
    print(f"notify-server: unhealthy: nothing listens on port {ports}", file=sys.stderr)
    return 1


def _reachable(host: str) -> str:
    """Where a listener on `host` is reached from inside its container."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        name = "NOTIFY_" + ".".join(str(part) for part in error["loc"]).upper()
        print(f"notify-server: {name}: {error['msg']}", file=sys.stderr)
        return 2
    return probe_health(settings)


if __name__ == "__main__":
    sys.exit(main())
