"""RetryLog: how the delivery loops say that a pass failed (docs/behaviour.md)."""

import logging
import sqlite3

import pytest
from sqlalchemy.exc import OperationalError

from notify_server import logs
from notify_server.logs import RetryLog

log = logging.getLogger("tests.retry_log")


def database_down() -> OperationalError:
    return OperationalError("SELECT 1", {}, sqlite3.OperationalError("unable to open\n database"))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: now[0])
    return now


def test_a_database_that_is_down_is_one_line_per_interval(caplog, clock):
    retries = RetryLog(log, every=30.0)
    with caplog.at_level(logging.ERROR, logger=log.name):
        for _ in range(11):  # a dropped database: every pass of every loop, a few a second
            retries.failed("claiming deliveries", database_down())
            clock[0] += 0.2
        clock[0] += 30
        retries.failed("claiming deliveries", database_down())

    assert [r.getMessage() for r in caplog.records] == [
        "claiming deliveries failed; retrying: the database: unable to open database",
        "claiming deliveries failed; retrying: the database: unable to open database"
        " (10 more such failures since the last line)",
    ]
    assert all(r.exc_info is None for r in caplog.records)  # no traceback


def test_each_loop_says_so_for_itself(caplog, clock):
    retries = RetryLog(log)
    with caplog.at_level(logging.ERROR, logger=log.name):
        retries.failed("claiming deliveries", database_down())
        retries.failed("renewing delivery leases", database_down())
    assert len(caplog.records) == 2


def test_anything_else_is_a_bug_with_its_traceback_every_time(caplog, clock):
    retries = RetryLog(log)
    with caplog.at_level(logging.ERROR, logger=log.name):
        for _ in range(3):
            try:
                raise KeyError("a bug")
            except KeyError as error:
                retries.failed("claiming deliveries", error)

    assert [r.getMessage() for r in caplog.records] == ["claiming deliveries failed; retrying"] * 3
    assert all(r.exc_info is not None and r.exc_info[0] is KeyError for r in caplog.records)
