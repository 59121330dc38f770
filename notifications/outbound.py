"""Requests to URLs that tenants type (budget webhooks now, tenant webhooks next): only to public addresses.

A tenant's URL is attacker-controlled input that our worker, inside our network, turns into a request. So
(docs/decisions/008-outbound-requests.md):

- http(s) only, on ports 80 and 443 (``OUTBOUND_ALLOWED_PORTS``), no credentials in the URL;
- the name is resolved once and EVERY address it resolves to must be public (:func:`refusal_for_address`), and
  the connection goes to a checked address, never to the name (a second lookup could answer differently: DNS
  rebinding); the Host header, TLS SNI and certificate check still use the name;
- no redirect is followed (a 3xx is the receiver's answer, reported as its status);
- short timeouts and an overall deadline, so a receiver that drips bytes cannot hold a worker;
- the response body is read up to :data:`BODY_LIMIT` bytes;
- what a tenant may see of a failure is ``HTTP <status>`` or ``could not connect`` (a refused address
  included), never what answered or why: the details go to our log.

``OUTBOUND_ALLOW_PRIVATE_NETWORKS`` (off by default) lets local development and tests reach loopback and
private addresses on any port. Link-local addresses, cloud metadata among them, stay refused even then.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import certifi
import urllib3
from django.conf import settings
from urllib3.connection import HTTPConnection, HTTPSConnection

logger = logging.getLogger(__name__)

SCHEMES = {"http": 80, "https": 443}
DEFAULT_PORTS = (80, 443)
CONNECT_TIMEOUT_SECONDS = 3.0
READ_TIMEOUT_SECONDS = 5.0
DEADLINE_SECONDS = 10.0  # the whole exchange, whatever the receiver's pace
BODY_LIMIT = 4096
COULD_NOT_CONNECT = "could not connect"
USER_AGENT = "Meterline-Webhooks/1"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
# Link-local already, but named so the rule cannot lose them: AWS, GCP, Azure, Alibaba, ECS task metadata.
CLOUD_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2", "169.254.170.23")
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Not globally reachable per IANA, but global to this Python's ipaddress tables (192.0.0.8, the dummy address).
NOT_GLOBAL = (ipaddress.ip_network("192.0.0.0/24"),)
# What OUTBOUND_ALLOW_PRIVATE_NETWORKS opens: loopback, RFC 1918 and unique-local (a laptop, a compose network).
DEVELOPMENT_NETWORKS = tuple(
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


class DeliveryFailed(OSError):
    """``str()`` is what the tenant may see; ``reason`` is for our log only."""

    def __init__(self, shown: str, reason: str = "") -> None:
        super().__init__(shown)
        self.reason = reason or shown


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes  # at most BODY_LIMIT bytes, as sent (no decompression)
    elapsed_seconds: float

    def raise_for_status(self) -> Response:
        """Anything but 2xx is a failure, a redirect included (it is never followed)."""
        if not 200 <= self.status < 300:
            raise DeliveryFailed(f"HTTP {self.status}")
        return self


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # ASCII (IDNA), no brackets, no trailing dot
    port: int
    path: str
    literal: Address | None

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if isinstance(self.literal, ipaddress.IPv6Address) else self.host
        return host if self.port == SCHEMES[self.scheme] else f"{host}:{self.port}"


def allows_private_networks() -> bool:
    return bool(getattr(settings, "OUTBOUND_ALLOW_PRIVATE_NETWORKS", False))


def allowed_ports() -> frozenset[int]:
    return frozenset(getattr(settings, "OUTBOUND_ALLOWED_PORTS", DEFAULT_PORTS))


def parse(url: str) -> Target:
    """The request target of ``url`` if its form is allowed (scheme, port, no credentials); otherwise
    :class:`DeliveryFailed` with the reason a person can act on."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as error:
        raise DeliveryFailed(COULD_NOT_CONNECT, "not a valid URL") from error
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise DeliveryFailed(COULD_NOT_CONNECT, "only http and https URLs are allowed")
    if parts.username is not None or parts.password is not None:
        raise DeliveryFailed(COULD_NOT_CONNECT, "credentials in the URL are not supported")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise DeliveryFailed(COULD_NOT_CONNECT, "the URL has no host")
    port = SCHEMES[scheme] if port is None else port
    if port not in allowed_ports() and not allows_private_networks():
        ports = ", ".join(str(p) for p in sorted(allowed_ports()))
        raise DeliveryFailed(COULD_NOT_CONNECT, f"only ports {ports} are allowed")
    literal = _ip_literal(host)
    if literal is None:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as error:
            raise DeliveryFailed(COULD_NOT_CONNECT, "the host name is not valid") from error
    # Spaces, control and non-ASCII characters percent-encoded: nothing a tenant types can split the request line.
    path = quote(
        (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), safe="/%:@!$&'()*+,;=-._~?"
    )
    return Target(scheme, str(literal) if literal else host, port, path, literal)


def _ip_literal(host: str) -> Address | None:
    """An address written as the host, in any notation a resolver would take (``2130706433``, ``0x7f.1``,
    ``0177.0.0.1`` are all 127.0.0.1 to ``inet_aton``)."""
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries and may be routed to: mapped, 6to4, Teredo, NAT64."""
    embedded = [address.ipv4_mapped, address.sixtofour, *(address.teredo or ())]
    if address in NAT64:
        embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [e for e in embedded if e is not None]


def refusal_for_address(address: Address, *, allow_private: bool = False) -> str | None:
    """Why we must not connect to ``address``, or None when it is a public unicast address."""
    if address in CLOUD_METADATA or address.is_link_local:
        return "a link-local or cloud metadata address"
    if isinstance(address, ipaddress.IPv6Address):
        for embedded in _embedded_ipv4(address):
            if refusal := refusal_for_address(embedded, allow_private=allow_private):
                return f"{refusal} (embedded in an IPv6 address)"
        if address.ipv4_mapped is not None:
            return None
    if address.is_unspecified or address.is_multicast:
        return "an unspecified or multicast address"
    if allow_private and any(address in network for network in DEVELOPMENT_NETWORKS):
        return None
    if address.is_loopback:
        return "a loopback address"
    if (
        address.is_private
        or address.is_reserved
        or not address.is_global
        or any(address in n for n in NOT_GLOBAL)
    ):
        return "a private, reserved or otherwise non-public address"  # CGNAT 100.64/10 is not global
    return None


def url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a place we will ever deliver to, judged without DNS (a form's check when
    the tenant saves it). None does not promise delivery: the name is resolved and checked on every request."""
    try:
        target = parse(url)
    except DeliveryFailed as refused:
        return refused.reason
    allow_private = allows_private_networks()
    if target.literal is not None:
        refusal = refusal_for_address(target.literal, allow_private=allow_private)
        return f"the host is {refusal}" if refusal else None
    if not allow_private and (target.host == "localhost" or target.host.endswith(".localhost")):
        return "the host is a loopback address"
    return None


def resolve(target: Target) -> list[Address]:
    """Every address ``target``'s host resolves to, all of them checked: one non-public address refuses the
    name (a name that resolves to a public and a private address would otherwise reach the private one)."""
    if target.literal is not None:
        addresses = [target.literal]
    else:
        try:
            infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as error:
            raise DeliveryFailed(COULD_NOT_CONNECT, f"{target.host} did not resolve") from error
        addresses = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    allow_private = allows_private_networks()
    for address in addresses:
        if refusal := refusal_for_address(address, allow_private=allow_private):
            raise DeliveryFailed(COULD_NOT_CONNECT, f"{target.host} resolves to {refusal}")
    return [a.ipv4_mapped if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped else a for a in addresses]


def post(url: str, body: bytes, headers: Mapping[str, str]) -> Response:
    """POST ``body`` to a tenant's ``url`` under the rules above. Returns whatever status answered (check it
    with :meth:`Response.raise_for_status`); raises :class:`DeliveryFailed` when nothing did."""
    started = time.monotonic()
    try:
        target = parse(url)
        addresses = resolve(target)
        return _post_first_reachable(target, addresses, body, headers, started)
    except DeliveryFailed as failed:
        logger.warning("outbound POST refused or failed: %s", failed.reason)
        raise


def _post_first_reachable(
    target: Target, addresses: list[Address], body: bytes, headers: Mapping[str, str], started: float
) -> Response:
    reason = "no address"
    for address in addresses:
        connection = _connection(target, address)
        try:
            connection.connect()  # only a failure to connect moves on to the next address
        except (OSError, urllib3.exceptions.HTTPError, ValueError) as error:
            connection.close()
            reason = f"connecting to {target.host} failed: {type(error).__name__}"
            if time.monotonic() - started >= DEADLINE_SECONDS:
                break
            continue
        connection.timeout = READ_TIMEOUT_SECONDS  # each read from here on; getresponse applies it
        connection.sock.settimeout(READ_TIMEOUT_SECONDS)
        return _exchange(connection, target, body, headers, started)
    raise DeliveryFailed(COULD_NOT_CONNECT, reason)


def _connection(target: Target, address: Address) -> HTTPConnection:
    if target.scheme == "http":
        return HTTPConnection(str(address), target.port, timeout=CONNECT_TIMEOUT_SECONDS)
    return HTTPSConnection(
        str(address),
        target.port,
        timeout=CONNECT_TIMEOUT_SECONDS,
        server_hostname=target.host,  # SNI and the certificate's name: the host the tenant named
        cert_reqs="CERT_REQUIRED",
        ca_certs=getattr(settings, "OUTBOUND_CA_BUNDLE", "") or certifi.where(),
    )


def _exchange(
    connection: HTTPConnection, target: Target, body: bytes, headers: Mapping[str, str], started: float
) -> Response:
    # Per-operation timeouts do not bound a receiver that sends a byte every few seconds: at the deadline
    # the socket is shut down, which ends any read in progress (as an end of file, hence the flag).
    cut_off = threading.Event()
    watchdog = threading.Timer(
        max(0.0, DEADLINE_SECONDS - (time.monotonic() - started)), _cut_off, [connection, cut_off]
    )
    watchdog.start()
    try:
        connection.request(
            "POST",
            target.path,
            body=body,
            headers={
                **headers,
                "Host": target.host_header,
                "User-Agent": USER_AGENT,
                "Accept-Encoding": "identity",
                "Connection": "close",
                "Content-Length": str(len(body)),
            },
            preload_content=False,
            decode_content=False,
        )
        response = connection.getresponse()
        content = response.read(BODY_LIMIT, decode_content=False)
    except (OSError, urllib3.exceptions.HTTPError, http.client.HTTPException, ValueError) as error:
        raise DeliveryFailed(COULD_NOT_CONNECT, f"{target.host} failed: {type(error).__name__}") from error
    finally:
        watchdog.cancel()
        connection.close()
    if cut_off.is_set():
        raise DeliveryFailed(COULD_NOT_CONNECT, f"{target.host} did not answer within {DEADLINE_SECONDS} s")
    return Response(response.status, content[:BODY_LIMIT], time.monotonic() - started)


def _cut_off(connection: HTTPConnection, cut_off: threading.Event) -> None:
    cut_off.set()
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
