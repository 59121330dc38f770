"""Fixtures of the payments tests: the Stripe test double with our settings pointing at it."""

from __future__ import annotations

import pytest

from billing.models import Invoice
from tests.billing.builders import make_plan
from tests.payments.stripe_world import (
    SECRET,
    synced,
)
from tests.stripe_double.fixtures import fast_stripe_retries, stripe_double  # noqa: F401


@pytest.fixture
def double(stripe_double, settings, fast_stripe_retries):  # noqa: F811
    """The double, with our settings pointing at it (never a patch of our code or of the SDK)."""
    settings.STRIPE_API_KEY = "sk_test_meterline"
    settings.STRIPE_API_BASE = stripe_double.url
    settings.STRIPE_WEBHOOK_SECRET = SECRET
    settings.STRIPE_TIMEOUT_SECONDS = 1.0
    return stripe_double


@pytest.fixture
def plan(db):
    return make_plan()


@pytest.fixture
def open_invoice(double, plan) -> Invoice:
    return synced(double, plan)


@pytest.fixture
def stripe_env(double, monkeypatch):
    """Settings for a worker in another process too (it reads the environment, not this process's settings).
    Requested before ``celery_worker``, so the worker starts with them."""
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_meterline")
    monkeypatch.setenv("STRIPE_API_BASE", double.url)
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", SECRET)
    return double
