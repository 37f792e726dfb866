"""Structured logs: one JSON object per line, on stderr. Never a secret: nothing here logs a
request body, a header or a credential."""

import logging
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.exc import OperationalError

# Attributes every LogRecord has; anything else was passed in `extra` and is kept.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "taskName",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own loggers go through ours; its access log is replaced by notify_server.access.
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    quiet_secret_loggers()


_SECRET_LOGGERS = ("hpack", "jh2.hpack")


def quiet_secret_loggers() -> None:
    # hpack (and jh2's copy of it, where its Rust one is missing) logs every HTTP/2 header it
    # encodes at DEBUG, bearer tokens included.
    for name in _SECRET_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


def uvicorn_log_config(level: str) -> dict[str, Any]:
    """For uvicorn.run(log_config=...): every process, workers included, logs JSON."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "notify_server.logs.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False, "level": "CRITICAL"},
            **{name: {"level": "INFO"} for name in _SECRET_LOGGERS},
        },
    }


class RetryLog:
    """How a loop that retries for ever says that a pass failed.

    A database that is down or gone fails every pass of every loop, several times a second;
    its traceback says nothing the first line does not. So a database's OperationalError is
    one line, without a traceback, and the same failure of the same loop at most once per
    `every` seconds (saying how many passes failed since). Anything else is a bug of ours:
    logged with its traceback each time.
    """

    def __init__(self, logger: logging.Logger, every: float = 30.0) -> None:
        self._log = logger
        self._every = every
        # (what failed, the error's class) -> (when last logged, passes failed since)
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def failed(self, what: str, error: BaseException) -> None:
        if not isinstance(error, OperationalError):
            self._log.error("%s failed; retrying", what, exc_info=error)
            return
        reason = " ".join(str(error.orig).split())[:300]
        key = (what, type(error.orig).__name__)
        now = time.monotonic()
        logged_at, since = self._seen.get(key, (-self._every, 0))
        if now - logged_at < self._every:
            self._seen[key] = (logged_at, since + 1)
            return
        also = f" ({since} more such failures since the last line)" if since else ""
        self._log.error("%s failed; retrying: the database: %s%s", what, reason, also)
        self._seen[key] = (now, 0)
