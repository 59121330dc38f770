"""Logging in to the portal: repeated failures lock the login out, keyed on the username and the client's
address; behind TRUSTED_PROXY_COUNT proxies that address comes from X-Forwarded-For, and otherwise never."""

import pytest
from django.contrib.auth.hashers import make_password
from django.test import Client

from tests.factories import USER_PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def test_login_is_throttled_after_repeated_failures(db):
    user = UserFactory(username="alice")
    client = Client()
    for _ in range(5):
        client.post("/login/", {"username": "alice", "password": "wrong"})
    response = client.post("/login/", {"username": "alice", "password": USER_PASSWORD})
    assert response.status_code == 429
    assert "_auth_user_id" not in client.session
    assert user.pk


PROXY = "10.0.0.5"  # the load balancer: every request reaches the app from it


def attempt(forwarded_for: str, password: str, remote: str = PROXY):
    """One login attempt as the app sees it behind the proxy: a fresh browser each time."""
    client = Client(REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded_for)
    response = client.post("/login/", {"username": "alice", "password": password})
    return response.status_code, "_auth_user_id" in client.session


@pytest.fixture
def alice(db, settings):
    """A user whose password is quick to check: these tests try it a few dozen times."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return UserFactory(username="alice", password=make_password(USER_PASSWORD))


def lock_out(forwarded_for: str) -> None:
    answers = [attempt(forwarded_for, "wrong") for _ in range(5)]
    assert answers == [(200, False)] * 4 + [(429, False)]  # the fifth failure locks


def test_behind_a_trusted_proxy_clients_are_locked_out_on_their_own_address(alice, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    lock_out("203.0.113.7")

    assert attempt("203.0.113.7", USER_PASSWORD) == (429, False)
    assert attempt("198.51.100.9", USER_PASSWORD) == (302, True)  # another person, same proxy
    # What the client wrote left of the proxy's entry proves nothing: the locked address stays locked.
    assert attempt("198.51.100.9, 203.0.113.7", USER_PASSWORD) == (429, False)
    assert attempt("203.0.113.7", USER_PASSWORD, remote="10.0.0.6") == (429, False)  # another proxy node


def test_two_proxies_take_the_address_the_outer_one_received_from(alice, settings):
    settings.TRUSTED_PROXY_COUNT = 2
    lock_out("6.6.6.6, 203.0.113.7, 10.0.0.4")  # forged, client (seen by the outer proxy), outer proxy
    assert attempt("7.7.7.7, 203.0.113.7, 10.0.0.4", USER_PASSWORD) == (429, False)
    assert attempt("6.6.6.6, 198.51.100.9, 10.0.0.4", USER_PASSWORD) == (302, True)


@pytest.mark.parametrize("forged", ["198.51.100.9", "not-an-address", "", "198.51.100.9, 203.0.113.7"])
def test_without_a_trusted_proxy_x_forwarded_for_is_ignored(alice, settings, forged):
    settings.TRUSTED_PROXY_COUNT = 0
    lock_out("203.0.113.7")
    assert attempt(forged, USER_PASSWORD) == (429, False)  # a forged header does not evade the lockout


def test_with_a_trusted_proxy_a_malformed_entry_falls_back_to_the_connecting_address(alice, settings):
    settings.TRUSTED_PROXY_COUNT = 1
    lock_out("garbage")
    assert attempt("also garbage", USER_PASSWORD) == (429, False)  # both are the proxy's address
    assert attempt("198.51.100.9", USER_PASSWORD) == (302, True)
