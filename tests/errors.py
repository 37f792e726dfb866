"""The Twilio error bodies (and date format) the tests expect, written once."""

import re
from datetime import UTC, datetime

DATE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")

UNAUTHENTICATED = {
    "code": 20003,
    "detail": "Your AccountSid or AuthToken was incorrect.",
    "message": "Authenticate",
    "more_info": "https://www.twilio.com/docs/errors/20003",
    "status": 401,
}


def twilio_error(status: int, code: int, message: str) -> dict:
    return {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def not_found(path: str) -> dict:
    return twilio_error(404, 20404, f"The requested resource {path} was not found")


def assert_error(response, status: int, code: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == twilio_error(status, code, message)


def assert_not_found(response, path: str) -> None:
    assert_error(response, 404, 20404, f"The requested resource {path} was not found")


def assert_invalid(response, name: str, message: str | None = None) -> str:
    """400/20001 naming the parameter; `message`, when given, is the exact reason. Returns
    the validator's reason after the colon."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert body == twilio_error(400, 20001, body["message"])
    prefix = f"Parameter '{name}' is invalid: "
    assert body["message"].startswith(prefix), body["message"]
    reason = body["message"][len(prefix) :]
    if message is not None:
        assert reason == message, body["message"]
    return reason


def assert_recent(value: str) -> None:
    """A Twilio date, within half a minute of now."""
    assert DATE.fullmatch(value), value
    when = datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - when).total_seconds()) < 30
