"""The Twilio error bodies the tests expect, written once."""

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


def assert_invalid(response, name: str) -> str:
    """400/20001 naming the parameter; returns the validator's reason after the colon."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert body == twilio_error(400, 20001, body["message"])
    prefix = f"Parameter '{name}' is invalid: "
    assert body["message"].startswith(prefix), body["message"]
    return body["message"][len(prefix) :]
