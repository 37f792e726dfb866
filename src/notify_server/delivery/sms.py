"""SMS for sms bindings, through a Twilio-compatible Messages API (Twilio's own, or any
service that speaks it), as Notify did through Programmable Messaging.

POST {NOTIFY_SMS_BASE_URL}/2010-04-01/Accounts/{NOTIFY_SMS_ACCOUNT_SID}/Messages.json, HTTP Basic
(NOTIFY_SMS_ACCOUNT_SID, NOTIFY_SMS_AUTH_TOKEN), form fields:
    To                   the binding's address
    MessagingServiceSid  the Service's MessagingServiceSid, else
    From                 NOTIFY_SMS_FROM (neither: the delivery fails)
    Body                 the `Sms` override's "body", else the notification's Body
    MediaUrl             one per entry of the `Sms` override's "media_urls"
    StatusCallback       the `Sms` override's "status_callback"
    MaxPrice             the `Sms` override's "max_price"
Twilio: "SMS needs Body or Sms.media_urls"; a notification with neither fails.

Answers: 201 -> sent (provider_message_id = the Message sid, SM...); 400 with Twilio error 21211
(invalid 'To' number) or 21614 (not a mobile number) -> failed, and the binding is deleted;
429, 5xx and transport errors -> retried; any other 4xx -> failed with Twilio's message.
"""

import functools
from typing import Any
from urllib.parse import urlencode

import httpx

from notify_server.config import Settings
from notify_server.delivery.channels import Job, Outcome, Result
from notify_server.delivery.rendering import SMS_HEADERS, Unsendable, sms_form, sms_url

MAX_RESPONSE_CHARS = 2000
# Twilio errors that say the address can never receive an SMS.
UNREACHABLE_NUMBER_CODES = frozenset((21211, 21614))


class SmsChannel:
    name = "sms"

    def __init__(self, settings: Settings) -> None:
        self._url = sms_url(settings)
        self._from = settings.sms_from
        self._client = httpx.AsyncClient(
            auth=(settings.sms_account_sid or "", settings.sms_auth_token or ""),
            timeout=settings.delivery_timeout_seconds,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, job: Job) -> Result:
        try:
            form = sms_form(job, self._from)
        except Unsendable as error:
            return Result(Outcome.FAILED, error_message=str(error))
        try:
            # Encoded here: httpx takes only a dict as `data`, and the order is part of the wire.
            response = await self._client.post(
                self._url, content=urlencode(form), headers=SMS_HEADERS
            )
        except httpx.HTTPError as error:
            return Result(Outcome.RETRY, error_message=f"SMS API unreachable: {error!r}")
        return answer(response)


def answer(response: httpx.Response) -> Result:
    """A Messages API answer as a delivery result."""
    status = response.status_code
    text = response.text[:MAX_RESPONSE_CHARS]
    body = _json(response)
    provider = functools.partial(Result, provider_status=status, provider_response=text)
    if status in (200, 201):
        sid = body.get("sid") if isinstance(body, dict) else None
        return provider(Outcome.SENT, provider_message_id=sid if isinstance(sid, str) else None)
    code = body.get("code") if isinstance(body, dict) else None
    message = body.get("message") if isinstance(body, dict) else None
    summary = f"SMS API {status}"
    if code is not None:
        summary += f" error {code}"
    summary += f": {message or response.reason_phrase}"
    if status == 400 and _as_int(code) in UNREACHABLE_NUMBER_CODES:
        return provider(Outcome.FAILED, error_message=summary, unregistered=True)
    if status == 429 or status >= 500:
        return provider(Outcome.RETRY, error_message=summary)
    return provider(Outcome.FAILED, error_message=summary)


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
