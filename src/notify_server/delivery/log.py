"""The `log` channel: sends nothing, records the delivery. The default when a channel has no
credential, so local and CI use needs no provider."""

import logging

from notify_server.config import Settings
from notify_server.delivery.channels import Job, Outcome, Result
from notify_server.delivery.rendering import provider_request

log = logging.getLogger("notify_server.delivery")


class LogChannel:
    name = "log"

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    async def send(self, job: Job) -> Result:
        if log.isEnabledFor(logging.INFO):
            # What would have left the machine, placeholders for secrets: one JSON log line
            # with the structured formatter (logs.py).
            log.info(
                "log channel: notification %s to %s binding %s",
                job.notification_sid,
                job.binding_type,
                job.binding_sid or "(direct)",
                extra={
                    "delivery_id": job.delivery_id,
                    "provider_request": provider_request(job, self._settings),
                },
            )
        return Result(Outcome.SENT, provider_message_id=f"log-{job.delivery_id}")

    async def aclose(self) -> None:
        return None


class RetiredChannel:
    """facebook-messenger and alexa: Twilio retired both channels."""

    name = "retired"

    async def send(self, job: Job) -> Result:
        return Result(
            Outcome.FAILED,
            error_message=f"The {job.binding_type} channel is retired; nothing was sent",
        )

    async def aclose(self) -> None:
        return None
