"""Which channel adapter serves a delivery. Adapters are built on first use."""

from notify_server.config import Settings
from notify_server.delivery.channels import Channel, Job, channel_name
from notify_server.delivery.log import LogChannel, RetiredChannel


class ChannelSet:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._log = LogChannel(settings)
        self._retired = RetiredChannel()
        self._built: dict[str, Channel] = {}

    def channel_for(self, job: Job) -> Channel:
        name = channel_name(job, self._settings)
        if name == "log":
            return self._log
        if name == "retired":
            return self._retired
        return self._adapter(name)

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
