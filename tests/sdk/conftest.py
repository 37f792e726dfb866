"""The official `twilio` package against a live `notify-server serve` on a free port."""

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from tests.factories import Account
from tests.servers import LiveServer, live_server


@dataclass(frozen=True)
class Exchange:
    method: str
    url: str
    params: dict | None
    data: dict | None
    status: int
    text: str


class RecordingHttpClient(TwilioHttpClient):
    """The SDK's own HTTP client, keeping every exchange so tests can see the wire."""

    def __init__(self) -> None:
        super().__init__(timeout=15)
        self.exchanges: list[Exchange] = []

    def request(self, method, url, params=None, data=None, **kwargs) -> Response:
        response = super().request(method, url, params=params, data=data, **kwargs)
        self.exchanges.append(
            Exchange(method, url, params, data, response.status_code, response.text)
        )
        return response

    @property
    def last(self) -> Exchange:
        return self.exchanges[-1]


@pytest.fixture(scope="module")
def server(
    database_url: str, secret_key: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    # One server for the module: it keeps no state between tests but its auth cache, and
    # every test authenticates as a fresh account.
    key_file = tmp_path_factory.mktemp("sdk") / "unused.key"
    env = {"NOTIFY_SECRET_KEY": secret_key, "NOTIFY_SECRET_KEY_FILE": str(key_file)}
    with live_server(database_url, env=env) as server:
        yield server


def sdk_client(
    server: LiveServer, username: str, password: str, account_sid: str | None = None
) -> Client:
    """A twilio.rest.Client whose Notify domain is the live server."""
    client = Client(username, password, account_sid, http_client=RecordingHttpClient())
    client.notify.base_url = server.base_url
    return client


@pytest.fixture
def sdk(server: LiveServer, account: Account) -> Client:
    """The SDK authenticated as `account` (Account SID + auth token)."""
    return sdk_client(server, account.sid, account.auth_token)


@pytest.fixture
def wire(sdk: Client) -> RecordingHttpClient:
    """What `sdk` sent and received."""
    return sdk.http_client
