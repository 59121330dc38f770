"""Logging in to the portal: repeated failures lock the login out."""

import pytest
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
