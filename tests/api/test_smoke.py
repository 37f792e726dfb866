from tests.factories import make_binding, make_service


def test_create_then_fetch_binding(client, account):
    service = make_service(client, account, FriendlyName="smoke")
    created = make_binding(client, account, service["sid"], Tag=["t1", "t2"])
    fetched = client.get(
        f"/v1/Services/{service['sid']}/Bindings/{created['sid']}", auth=account.auth
    )
    assert fetched.status_code == 200
    assert fetched.json() == created
