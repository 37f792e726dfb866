"""A fake Twilio Messages API on a free 127.0.0.1 port: checks HTTP Basic and the account in the
path as Twilio does, records every request, answers per scripted replies (by To number) and
otherwise 201 with a queued Message (sid SM...)."""

import base64
import threading
import uuid
from collections import deque
from typing import Any

from starlette.responses import JSONResponse, Response

from tests.delivery.fake_fcm import Recorded, RecordingServer, Reply


class FakeSms:
    def __init__(self) -> None:
        self.account_sid = "AC" + uuid.uuid4().hex
        self.auth_token = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._scripts: dict[str, deque[Reply]] = {}
        self.message_sids: list[str] = []
        self._server = RecordingServer(self._handle)
        self.url = self._server.url

    @property
    def messages_path(self) -> str:
        return f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"

    def start(self) -> "FakeSms":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self.message_sids.clear()
        self._server.clear()

    def script(self, to: str, *replies: Reply) -> None:
        """Messages to this number answer these, then succeed."""
        with self._lock:
            self._scripts.setdefault(to, deque()).extend(replies)

    @property
    def requests(self) -> list[Recorded]:
        return self._server.requests

    async def _handle(self, request: Recorded) -> Response:
        expected = "Basic " + base64.b64encode(
            f"{self.account_sid}:{self.auth_token}".encode()
        ).decode("ascii")
        if request.headers.get("authorization") != expected:
            return _reply(twilio_error(401, 20003, "Authenticate"))
        if request.method != "POST" or request.path != self.messages_path:
            return _reply(
                twilio_error(404, 20404, f"The requested resource {request.path} was not found")
            )
        form = request.form()
        fields = dict(form)
        to = fields.get("To", "")
        with self._lock:
            script = self._scripts.get(to)
            if script:
                return _reply(script.popleft())
            sid = "SM" + uuid.uuid4().hex
            self.message_sids.append(sid)
        media = [value for name, value in form if name == "MediaUrl"]
        return JSONResponse(
            {
                "sid": sid,
                "account_sid": self.account_sid,
                "to": to,
                "from": fields.get("From"),
                "messaging_service_sid": fields.get("MessagingServiceSid"),
                "body": fields.get("Body", ""),
                "num_media": str(len(media)),
                "status": "queued" if "From" in fields else "accepted",
            },
            201,
        )


def twilio_error(status: int, code: int, message: str) -> Reply:
    body: dict[str, Any] = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return Reply(status, body)


def _reply(reply: Reply) -> Response:
    return JSONResponse(reply.body, reply.status)
