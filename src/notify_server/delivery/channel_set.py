"""Which channel adapter serves a delivery. Adapters are built on first use."""

from notify_server.config import Settings
from notify_server.delivery.channels import Channel, Job
from notify_server.delivery.log import LogChannel, RetiredChannel

RETIRED_TYPES = frozenset(("facebook-messenger", "alexa"))


class ChannelSet:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._log = LogChannel()
        self._retired = RetiredChannel()
        self._built: dict[str, Channel] = {}

    def channel_for(self, job: Job) -> Channel:
        if job.binding_type in RETIRED_TYPES:
            return self._retired
        if job.binding_type == "sms":
            configured = self._settings.sms_account_sid and self._settings.sms_auth_token
            return self._adapter("sms") if configured else self._log
        # Push without a credential goes to the log channel: local and CI use needs none.
        if job.credential is None:
            return self._log
        return self._adapter("apns" if job.binding_type == "apn" else "fcm")

    def _adapter(self, name: str) -> Channel:
        if name not in self._built:
            if name == "apns":
                from notify_server.delivery.apns import ApnsChannel

                self._built[name] = ApnsChannel(self._settings)
            elif name == "fcm":
                from notify_server.delivery.fcm import FcmChannel

                self._built[name] = FcmChannel(self._settings)
            else:
                from notify_server.delivery.sms import SmsChannel

                self._built[name] = SmsChannel(self._settings)
        return self._built[name]

    async def aclose(self) -> None:
        for channel in self._built.values():
            await channel.aclose()
