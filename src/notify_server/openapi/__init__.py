"""The API description served at /openapi.json: Twilio's Notify v1 description
(twilio_notify_v1.json: Twilio's twilio_notify_v1.yaml converted to JSON, nothing else
changed) with our extensions (extensions.py) merged in."""

import copy
import importlib.resources
from functools import cache
from typing import Any

import orjson

from notify_server.openapi import extensions

TWILIO_DESCRIPTION = "twilio_notify_v1.json"


def twilio_description() -> dict[str, Any]:
    text = importlib.resources.files(__package__).joinpath(TWILIO_DESCRIPTION).read_bytes()
    loaded: dict[str, Any] = orjson.loads(text)
    return loaded


@cache
def _description() -> dict[str, Any]:
    description = twilio_description()
    # Twilio names notify.twilio.com on every path; the server answering is the one to call.
    for item in description["paths"].values():
        item.pop("servers", None)
    extensions.apply(description)
    description["info"]["description"] = (
        "Twilio's Notify v1 API as served by notify-server, with notify-server's extensions"
        " (each marked `x-notify-server-extension: true`)."
    )
    return description


def description(base_url: str) -> dict[str, Any]:
    """The description whose server is `base_url` (the configured public URL or the
    request's own)."""
    served = copy.copy(_description())
    served["servers"] = [{"url": base_url}]
    return served
