"""What a person meets first on the command line: --version, help on every flag, the log level
from NOTIFY_LOG_LEVEL, and a bad setting answered with one line instead of a traceback."""

import argparse
import importlib.metadata
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from notify_server.cli import build_parser
from tests.test_cli import cli_env


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "notify_server.cli", *args],
        env=cli_env(f"sqlite:///{tmp_path / 'basics.db'}", tmp_path, **env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version(tmp_path):
    result = run(tmp_path, "--version")
    assert result.returncode == 0
    assert result.stdout == f"notify-server {importlib.metadata.version('notify-server')}\n"


def _commands(parser: argparse.ArgumentParser, path: str = "notify-server"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{path} {name}")


def test_every_flag_and_argument_has_help():
    missing = [
        f"{path} {action.dest}"
        for path, parser in _commands(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert missing == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NOTIFY_PORT", "abc"),
        ("NOTIFY_LOG_LEVEL", "loud"),
        ("NOTIFY_WORKER_CONCURRENCY", "0"),
        ("NOTIFY_OUTBOUND_ALLOW", "10.0.0.0/33"),
        # These started: inf broke every claim (and the metrics thread), 1e12 s of lease
        # overflowed a datetime, and the URLs failed each delivery or went into each body.
        ("NOTIFY_DELIVERY_LEASE_SECONDS", "inf"),
        ("NOTIFY_DELIVERY_LEASE_SECONDS", "1e12"),
        ("NOTIFY_METRICS_REFRESH_SECONDS", "nan"),
        ("NOTIFY_SMS_BASE_URL", "notaurl"),
        ("NOTIFY_PUBLIC_URL", "not a url"),
    ],
)
@pytest.mark.parametrize("command", [("serve",), ("worker",), ("db", "upgrade")])
def test_a_bad_setting_is_one_line(tmp_path, variable, value, command):
    result = run(tmp_path, *command, **{variable: value})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"notify-server: {variable}: ")


def test_an_empty_metrics_port_is_unset(tmp_path):
    # As compose files write it: NOTIFY_METRICS_PORT= with nothing after.
    result = run(tmp_path, "db", "upgrade", NOTIFY_METRICS_PORT="")
    assert result.returncode == 0, result.stderr


def wait_until_it_catches_sigterm(pid: int, timeout: float = 60) -> None:
    """Until the process has its SIGTERM handler (it is running, not still importing); a
    loaded machine can take seconds to get there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(
            next(line for line in status.splitlines() if line.startswith("SigCgt:"))[7:], 16
        )
        if caught & (1 << (signal.SIGTERM - 1)):
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} did not install its SIGTERM handler in {timeout} s")


def worker_log(tmp_path: Path, *args: str, **env: str) -> list[dict]:
    """A worker's JSON log lines from start-up to a SIGTERM a moment later."""
    process = subprocess.Popen(
        [sys.executable, "-m", "notify_server.cli", "worker", *args],
        env=cli_env(f"sqlite:///{tmp_path / 'log.db'}", tmp_path, **env),
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_until_it_catches_sigterm(process.pid)
    time.sleep(0.5)  # a poll or two of the outbox: something to log at debug
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_notify_log_level_is_honoured(tmp_path):
    debug = worker_log(tmp_path, NOTIFY_LOG_LEVEL="DEBUG")
    assert any(entry["level"] == "debug" for entry in debug), debug
    quiet = worker_log(tmp_path, NOTIFY_LOG_LEVEL="warning")
    assert all(entry["level"] in ("warning", "error", "critical") for entry in quiet), quiet


def test_the_flag_wins_over_the_variable(tmp_path):
    lines = worker_log(tmp_path, "--log-level", "error", NOTIFY_LOG_LEVEL="debug")
    assert all(entry["level"] in ("error", "critical") for entry in lines), lines
