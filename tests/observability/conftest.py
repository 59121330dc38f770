"""Scraping /metrics as Prometheus does, and reading the text with prometheus_client's own parser."""

from __future__ import annotations

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from tests.payments.conftest import double, plan  # noqa: F401 - the Stripe test double, for sync failures
from tests.stripe_double.fixtures import fast_stripe_retries, stripe_double  # noqa: F401

TOKEN = "scrape-token-for-tests"


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 when there is none yet)."""
    return sum(v for n, found, v in samples(text) if n == name and labels.items() <= found.items())


@pytest.fixture
def metrics_token(settings):
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


@pytest.fixture
def scrape(metrics_token):
    """GET /metrics with the token; returns the exposition text."""

    def get() -> str:
        response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {metrics_token}")
        assert response.status_code == 200, response.content
        assert response["Content-Type"].startswith("text/plain; version=")
        return response.content.decode()

    return get
