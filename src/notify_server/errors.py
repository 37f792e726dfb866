"""Every failure is one of these; `twilio_error_response` renders all of them."""

import orjson
from starlette.responses import Response


class TwilioError(Exception):
    status = 400
    code = 20001

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }

    def headers(self) -> dict[str, str]:
        return {}


class InvalidParameter(TwilioError):
    status, code = 400, 20001


class MissingParameter(InvalidParameter):
    def __init__(self, name: str) -> None:
        super().__init__(f"Missing required parameter {name} in the post body")


class LimitExceeded(InvalidParameter):
    pass


class AuthenticationFailed(TwilioError):
    status, code = 401, 20003

    def __init__(self) -> None:
        super().__init__("Authenticate")

    def body(self) -> dict:
        # Twilio's 401 carries an extra `detail`.
        return {**super().body(), "detail": "Your AccountSid or AuthToken was incorrect."}

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="Twilio API"'}


class NotFound(TwilioError):
    """The handler names the request's path, as Twilio does (without the /v1 prefix)."""

    status, code = 404, 20404

    def __init__(self) -> None:
        super().__init__("The requested resource was not found")

    @staticmethod
    def message_for(path: str) -> str:
        return f"The requested resource {path} was not found"


class MethodNotAllowed(TwilioError):
    status, code = 405, 20004

    def __init__(self, method: str) -> None:
        super().__init__(f"Method not allowed: {method}")


class BodyTooLarge(TwilioError):
    status, code = 413, 20001

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body exceeds the maximum of {limit} bytes")


class ServiceUnavailable(TwilioError):
    status, code = 503, 20503

    def __init__(self, message: str = "Service is unavailable, please retry the request") -> None:
        super().__init__(message)


class SchemaNotMigrated(ServiceUnavailable):
    def __init__(self) -> None:
        super().__init__(
            "Service is unavailable: the database schema is not migrated"
            " (the operator must run `notify-server db upgrade`)"
        )


class InternalError(TwilioError):
    status, code = 500, 20500

    def __init__(self) -> None:
        super().__init__("An internal server error has occurred")


def twilio_error_response(error: TwilioError) -> Response:
    return Response(
        orjson.dumps(error.body()),
        status_code=error.status,
        headers=error.headers(),
        media_type="application/json",
    )
