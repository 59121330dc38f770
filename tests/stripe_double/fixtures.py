"""pytest fixtures for the Stripe double. To use them elsewhere, import them in that folder's conftest.py
(``from tests.stripe_double.fixtures import fast_stripe_retries, stripe_double``), as this folder's does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .server import StripeDouble


@pytest.fixture
def stripe_double() -> Iterator[StripeDouble]:
    """A fresh double on ``127.0.0.1:<free port>`` (``stripe_double.url``), stopped after the test.

    Fails the test if the double itself crashed while answering (a bug in the double, not in the code under test).
    """
    double = StripeDouble().start()
    try:
        yield double
    finally:
        double.stop()
    assert not double.internal_errors, "the Stripe double failed:\n" + "\n".join(double.internal_errors)


@pytest.fixture
def fast_stripe_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink the SDK's retry backoff (0.5 s doubling up to 5 s) so retry tests stay fast; the retry decisions
    themselves are unchanged."""
    import stripe

    monkeypatch.setattr(stripe.HTTPClient, "INITIAL_DELAY", 0.01)
    monkeypatch.setattr(stripe.HTTPClient, "MAX_DELAY", 0.05)
