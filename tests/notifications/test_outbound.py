"""Requests to tenants' URLs reach public addresses only, whatever the URL's notation or its name's DNS answers,
and tell the tenant nothing about what answered beyond ``HTTP <status>`` or ``could not connect``.

A real receiver on loopback stands behind every hostile URL below, on a port the test allows: if the guard
let one through, the receiver would record the request. DNS is the only thing replaced (``fake_dns``)."""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from notifications import outbound
from notifications.outbound import BODY_LIMIT, COULD_NOT_CONNECT, DEADLINE_SECONDS, DeliveryFailed
from tests.notifications.receiver import Answer, Receiver

BODY = b'{"type":"ping"}'

# Every class of non-public address: refused however the development setting is set.
ALWAYS_REFUSED = [
    "169.254.0.0/16",  # link-local, cloud metadata 169.254.169.254
    "fe80::/10",
    "fd00:ec2::254/128",
    "100.64.0.0/10",  # CGNAT
    "0.0.0.0/8",
    "::/128",
    "224.0.0.0/4",
    "ff00::/8",
    "240.0.0.0/4",  # reserved, broadcast included
    "192.0.0.0/24",
    "192.0.2.0/24",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "2001:db8::/32",
    "::ffff:169.254.0.0/112",  # IPv4-mapped
    "::ffff:100.64.0.0/106",
    "::a9fe:0/112",  # IPv4-compatible 169.254/16
    "2002:a9fe::/32",  # 6to4 of 169.254/16
    "64:ff9b::a9fe:0/112",  # NAT64 of 169.254/16
]
# Refused unless OUTBOUND_ALLOW_PRIVATE_NETWORKS (local development) is on.
PRIVATE = [
    "127.0.0.0/8",
    "::1/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
    "::ffff:127.0.0.0/104",
    "::ffff:10.0.0.0/104",
    "2002:7f00::/24",  # 6to4 of 127/8
    "2002:c0a8::/32",  # 6to4 of 192.168/16
]
TEREDO_OF_LOOPBACK = "2001:0:4136:e378:8000:63bf:80ff:fffe"  # client 127.0.0.1, obfuscated as Teredo does
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.215.14",
    "2606:4700::1111",
    "2a00:1450::1",
    "::ffff:8.8.8.8",
    "2002:808:808::1",
]


def addresses_in(networks):
    return st.sampled_from(networks).flatmap(
        lambda cidr: st.integers(0, ipaddress.ip_network(cidr).num_addresses - 1).map(
            lambda n, cidr=cidr: ipaddress.ip_network(cidr)[n]
        )
    )


@given(addresses_in(ALWAYS_REFUSED), st.booleans())
def test_link_local_metadata_cgnat_multicast_reserved_and_unspecified_addresses_are_always_refused(
    address, allow_private
):
    assert outbound.refusal_for_address(address, allow_private=allow_private)


@given(addresses_in(PRIVATE))
def test_loopback_and_private_addresses_are_refused_unless_development_allows_them(address):
    assert outbound.refusal_for_address(address)
    assert outbound.refusal_for_address(address, allow_private=True) is None


def test_an_ipv6_address_carrying_loopback_in_teredo_form_is_refused():
    teredo = ipaddress.ip_address(TEREDO_OF_LOOPBACK)
    assert teredo.teredo[1] == ipaddress.ip_address("127.0.0.1")
    assert outbound.refusal_for_address(teredo)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_unicast_addresses_are_allowed(address):
    assert outbound.refusal_for_address(ipaddress.ip_address(address)) is None


@pytest.fixture
def guarded(settings, receiver):
    """Production rules, except that the receiver's port is allowed: only the address rule stands between a
    hostile URL and the receiver."""
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    settings.OUTBOUND_ALLOWED_PORTS = [80, 443, receiver.port]
    return receiver


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.1",
        "127.0.0.2",
        "2130706433",  # decimal
        "0x7f000001",  # hex
        "0177.0.0.1",  # octal
        "0x7f.0.0.1",
        "017700000001",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[::1]",
        "0.0.0.0",  # noqa: S104 - reaches local listeners on Linux
        "0",
        "localhost",
        "localhost.",
        "LocalHost",
        "loopback.test",  # resolves to 127.0.0.1
        "loopback-v6.test",  # resolves to ::ffff:127.0.0.1
        "public-then-private.test",
        "private-then-public.test",
        "private.test",
    ],
)
def test_hostile_urls_are_refused_with_the_generic_error_and_nothing_is_sent(guarded, fake_dns, host):
    fake_dns.names.update(
        {
            "loopback.test": ["127.0.0.1"],
            "loopback-v6.test": ["::ffff:127.0.0.1"],
            "public-then-private.test": ["93.184.215.14", "127.0.0.1"],
            "private-then-public.test": ["127.0.0.1", "93.184.215.14"],
            "private.test": ["10.1.2.3"],
        }
    )
    with pytest.raises(DeliveryFailed) as failed:
        outbound.post(guarded.url(host), BODY, {"Content-Type": "application/json"})
    assert str(failed.value) == COULD_NOT_CONNECT
    assert guarded.received == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://hooks.example.com/x",
        "file:///etc/passwd",
        "gopher://hooks.example.com:70/_POST",
        "javascript:alert(1)",
        "//hooks.example.com/x",
        "http://",
        "http://[::1/x",
        "http://hooks.example.com:8080/x",
        "https://hooks.example.com:22/x",
        "http://user:secret@hooks.example.com/x",
        "http://hooks.example.com:99999/x",
    ],
)
def test_other_schemes_ports_and_credentials_are_refused_without_a_lookup(settings, fake_dns, url):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    fake_dns.names["hooks.example.com"] = ["93.184.215.14"]
    with pytest.raises(DeliveryFailed) as failed:
        outbound.post(url, BODY, {})
    assert str(failed.value) == COULD_NOT_CONNECT
    assert fake_dns.lookups == {}
    assert outbound.url_problem(url)


@pytest.fixture
def development(settings):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = True
    settings.OUTBOUND_ALLOWED_PORTS = [80, 443]


def test_with_the_development_setting_a_loopback_receiver_gets_the_request(development, receiver, fake_dns):
    fake_dns.names["hooks.test"] = ["127.0.0.1"]

    response = outbound.post(
        receiver.url("hooks.test", "/in/hook?tenant=acme"), BODY, {"Meterline-Signature": "t=1,v1=ab"}
    )

    assert (response.status, response.body) == (204, b"")
    (request,) = receiver.received
    assert (request.path, request.body) == ("/in/hook?tenant=acme", BODY)
    assert request.headers["Meterline-Signature"] == "t=1,v1=ab"
    assert request.headers["Host"] == f"hooks.test:{receiver.port}"
    assert fake_dns.lookups == {"hooks.test": 1}  # connected to the checked address, never looked up again


def test_a_path_with_spaces_line_breaks_and_non_ascii_reaches_the_receiver_percent_encoded(
    development, receiver
):
    outbound.post(receiver.url(path="/in/ünï code\r\nX-Injected: 1?q=a b"), BODY, {}).raise_for_status()

    (request,) = receiver.received
    assert request.path.isascii() and " " not in request.path
    assert "X-Injected" not in request.headers
    assert request.path.startswith("/in/%C3%BCn%C3%AF%20code")


def test_redirects_are_not_followed_and_fail_as_their_status(development, receiver):
    receiver.answer = Answer(307, headers={"Location": receiver.url(path="/elsewhere")})

    response = outbound.post(receiver.url(), BODY, {})

    assert response.status == 307
    with pytest.raises(DeliveryFailed, match=r"^HTTP 307$"):
        response.raise_for_status()
    assert [r.path for r in receiver.received] == ["/hook"]


def test_a_large_response_body_is_read_only_up_to_the_limit(development, receiver):
    receiver.answer = Answer(200, body=bytes(range(256)) * 4096)  # 1 MiB

    response = outbound.post(receiver.url(), BODY, {})

    assert response.body == (bytes(range(256)) * 4096)[:BODY_LIMIT]
    assert response.raise_for_status() is response


def test_an_error_answer_reveals_only_its_status(development, receiver):
    receiver.answer = Answer(502, body=b"nginx/1.25 upstream redis:6379 refused")
    with pytest.raises(DeliveryFailed) as failed:
        outbound.post(receiver.url(), BODY, {}).raise_for_status()
    assert str(failed.value) == "HTTP 502"


def test_a_closed_port_is_could_not_connect(development):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(DeliveryFailed) as failed:
        outbound.post(f"http://127.0.0.1:{port}/", BODY, {})
    assert str(failed.value) == COULD_NOT_CONNECT


@pytest.mark.slow
def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_deadline(development, receiver):
    receiver.answer = Answer(drip_seconds=0.2)
    started = time.monotonic()
    with pytest.raises(DeliveryFailed) as failed:
        outbound.post(receiver.url(), BODY, {})
    assert str(failed.value) == COULD_NOT_CONNECT
    assert time.monotonic() - started < DEADLINE_SECONDS + 2


@pytest.fixture
def ca(tmp_path):
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    authority.bundle_path = str(tmp_path / "ca.pem")
    return authority


def tls_receiver(ca, name: str) -> Receiver:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    return Receiver(tls=context)


@pytest.mark.parametrize(
    ("certificate_for", "trusted", "url_host", "delivered"),
    [
        ("hooks.test", True, "hooks.test", True),
        ("other.test", True, "hooks.test", False),  # a certificate for another name
        ("hooks.test", False, "hooks.test", False),  # signed by a CA we do not trust
        ("hooks.test", True, "127.0.0.1", False),  # the address is not the certificate's name
    ],
)
def test_https_connects_to_the_checked_address_but_verifies_the_certificate_for_the_name(
    development, settings, fake_dns, ca, certificate_for, trusted, url_host, delivered
):
    fake_dns.names["hooks.test"] = ["127.0.0.1"]
    settings.OUTBOUND_CA_BUNDLE = ca.bundle_path if trusted else ""
    receiver = tls_receiver(ca, certificate_for)
    try:
        if delivered:
            response = outbound.post(receiver.url(url_host, scheme="https"), BODY, {})
            assert response.status == 204
            assert receiver.server_names == ["hooks.test"]  # SNI is the name, not the address
            assert receiver.received[0].headers["Host"] == f"hooks.test:{receiver.port}"
        else:
            with pytest.raises(DeliveryFailed) as failed:
                outbound.post(receiver.url(url_host, scheme="https"), BODY, {})
            assert str(failed.value) == COULD_NOT_CONNECT
            assert receiver.received == []
    finally:
        receiver.close()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://hooks.example.com/x", None),
        ("http://hooks.example.com:80/x", None),
        ("https://93.184.215.14/x", None),
        ("http://127.0.0.1/x", "loopback"),
        ("http://2130706433/", "loopback"),
        ("http://[::ffff:127.0.0.1]/", "loopback"),
        ("http://localhost/", "loopback"),
        ("http://api.localhost/", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fd00:ec2::254]/", "link-local"),
        ("http://10.0.0.1/", "private"),
        ("http://100.64.1.1/", "private"),
        ("http://0.0.0.0/", "unspecified"),
        ("ftp://hooks.example.com/", "only http and https"),
        ("https://hooks.example.com:8443/", "only ports 80, 443"),
    ],
)
def test_url_problem_judges_the_url_without_dns(settings, fake_dns, url, problem):
    settings.OUTBOUND_ALLOW_PRIVATE_NETWORKS = False
    settings.OUTBOUND_ALLOWED_PORTS = [80, 443]
    found = outbound.url_problem(url)
    assert (found is None) if problem is None else (problem in found)
    assert fake_dns.lookups == {}
