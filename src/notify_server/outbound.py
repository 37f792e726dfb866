"""Which destinations the server may call on a tenant's behalf.

One policy for every URL a tenant can influence (delivery callback URLs today): http(s) only,
no userinfo, and the address actually connected to must be public. "Public" is decided on the
resolved address at connect time, inside the HTTP client's network backend, so a name that
resolves to a public address when it is stored and to 127.0.0.1 when it is called (DNS
rebinding) is still refused, and so is every spelling of an internal address
(`2130706433`, `0x7f.1`, `[::ffff:127.0.0.1]`, 6to4/NAT64/Teredo forms).

Operators opt in to private destinations with NOTIFY_OUTBOUND_ALLOW (CIDRs and host names).
Provider URLs the operator configured (NOTIFY_APNS_*, NOTIFY_FCM_*, NOTIFY_SMS_BASE_URL) are
not tenant-influenced and do not go through this policy.
"""

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses it resolves to (tests inject one to simulate DNS).
Resolver = Callable[[str, int], Awaitable[list[str]]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_COMPAT = ipaddress.IPv6Network("::/96")


class DestinationRefused(Exception):
    """The URL or the address it leads to is not one a tenant may make us call."""


def parse_allow_list(value: str) -> tuple[tuple[IPNetwork, ...], frozenset[str]]:
    """NOTIFY_OUTBOUND_ALLOW: comma-separated CIDRs (or single addresses) and host names."""
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    for entry in (e.strip() for e in value.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            if "/" in entry or not all(c.isalnum() or c in "-._" for c in entry):
                raise ValueError(f"{entry!r} is neither a CIDR nor a host name") from None
            hosts.add(entry.lower().rstrip("."))
    return tuple(networks), frozenset(hosts)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for, in every form a stack may route."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or (address in _COMPAT and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def why_not_public(address: IPAddress) -> str | None:
    """None for a globally routable unicast address; else what it is."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            reason = why_not_public(embedded)
            return None if reason is None else f"{reason} ({embedded} inside {address})"
    for kind, flag in (
        ("a loopback", address.is_loopback),
        ("an unspecified", address.is_unspecified),
        ("a link-local", address.is_link_local),
        ("a multicast", address.is_multicast),
        ("a private", address.is_private),
        ("a reserved", address.is_reserved),
    ):
        if flag:
            return f"{kind} address"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "a site-local address"
    if not address.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT)
        return "not a public address"
    return None


def literal_address(host: str) -> IPAddress | None:
    """The address a URL host names literally, in any spelling the resolver would accept
    (`2130706433`, `0x7f.1`, `127.1`, `[::1]`); None for a host name."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def is_host_name(raw_host: bytes) -> bool:
    """What a resolver can look up: labels of 1 to 63 bytes (the ASCII, IDNA-encoded form),
    at most 253 in all, one trailing dot allowed. Python's resolver refuses anything else
    with a UnicodeError on every attempt."""
    name = raw_host[:-1] if raw_host.endswith(b".") else raw_host
    return 0 < len(name) <= 253 and all(0 < len(label) <= 63 for label in name.split(b"."))


async def _system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class OutboundPolicy:
    def __init__(self, allow: str = "", resolver: Resolver | None = None) -> None:
        self._networks, self._hosts = parse_allow_list(allow)
        self._resolve = resolver or _system_resolver

    def _host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in self._hosts

    def _refusal(self, address: IPAddress) -> str | None:
        if any(address in network for network in self._networks):
            return None
        return why_not_public(address)

    def check_address(self, address: IPAddress) -> None:
        reason = self._refusal(address)
        if reason is not None:
            raise DestinationRefused(f"{address} is {reason}")

    def check_url(self, url: str) -> None:
        """What can be told from the URL alone: scheme, userinfo, literal addresses, localhost.
        The resolved address is checked again when connecting."""
        try:
            parsed = httpx.URL(url)
            # Decoded from IDNA, which can fail (ValueError): xn--ls8h is an emoji IDNA 2008
            # does not allow.
            host = parsed.host
        except (httpx.InvalidURL, TypeError, ValueError):
            raise DestinationRefused("not a valid URL") from None
        if parsed.scheme not in ("http", "https"):
            raise DestinationRefused("only http and https URLs may be called")
        if parsed.userinfo:
            raise DestinationRefused("a URL may not carry a user name or password")
        if not host:
            raise DestinationRefused("the URL has no host")
        if self._host_allowed(host):
            return
        address = literal_address(host)
        if address is not None:
            self.check_address(address)
        elif not is_host_name(parsed.raw_host):
            raise DestinationRefused(f"{host} is not a valid host name")
        elif host.rstrip(".") == "localhost" or host.rstrip(".").endswith(".localhost"):
            raise DestinationRefused(f"{host} is a loopback host name")

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses of `host` that may be connected to; refused if there are none."""
        if self._host_allowed(host):
            return [host]
        try:
            resolved = await self._resolve(host, port)
        except OSError as error:
            # Not a refusal: the name may resolve later, so the caller retries as for any
            # other connection failure.
            raise httpcore.ConnectError(f"{host} could not be resolved ({error})") from None
        allowed: list[str] = []
        refusal = f"{host} resolves to no address"
        for text in dict.fromkeys(resolved):
            address = ipaddress.ip_address(text.split("%", 1)[0])
            reason = self._refusal(address)
            if reason is None:
                allowed.append(text)
            else:
                refusal = f"{host} resolves to {address}, {reason}"
        if not allowed:
            raise DestinationRefused(refusal)
        return allowed

    def client(self, *, timeout: httpx.Timeout, limits: httpx.Limits) -> httpx.AsyncClient:
        """An HTTP client that connects only where this policy allows, follows no redirects
        and ignores proxy variables (a proxy would connect on our behalf, unchecked)."""
        return httpx.AsyncClient(
            transport=_GuardedTransport(self, limits),
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
        )


class _GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolves the host itself, checks each address, then connects to a checked address:
    the address connected to is the address checked."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self._policy = policy
        self._backend = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        last_error: Exception | None = None
        for address in await self._policy.addresses(host, port):
            try:
                return await self._backend.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last_error = error
        assert last_error is not None
        raise last_error

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise DestinationRefused("unix sockets are never a tenant's destination")

    async def sleep(self, seconds: float) -> None:
        await self._backend.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(self, policy: OutboundPolicy, limits: httpx.Limits) -> None:
        super().__init__(trust_env=False, limits=limits)
        # httpx builds its connection pool without a way to pass a network backend; this is
        # the same pool it builds, with ours. (TLS still verifies and sends SNI for the host
        # name: httpcore starts TLS with the origin's name, not the address we connected to.)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=self._pool._ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_GuardedBackend(policy),
        )
