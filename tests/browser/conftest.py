"""Browser tests: Playwright (sync API) driving Debian's chromium against pytest-django's live server.

No browser is ever downloaded: chromium comes from the system (.ci/run installs Debian's package). Without it
the tests skip with the reason, except in CI (``CI`` set), where a missing browser is a failure.

Set ``METERLINE_SCREENSHOTS=docs/screenshots`` to have the journey save full-page PNGs of the main pages
(``make screenshots``); they show the demo data that ``make run`` loads.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from billing.demo import load_demo_billing
from tenants.models import Agent
from tests import livekit_samples as samples
from usage import ingest, livekit, validation
from usage.demo import load_demo
from usage.models import Session

CHROMIUM = Path(os.environ.get("METERLINE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
VIEWPORT = {"width": 1280, "height": 800}
HERE = Path(__file__).resolve().parent
MISSING = f"no chromium at {CHROMIUM}: install Debian's package (apt-get install chromium) or set METERLINE_CHROMIUM"


def pytest_collection_modifyitems(config, items):
    """Without a browser, skip these tests before any database is set up for them (never in CI)."""
    if CHROMIUM.exists() or os.environ.get("CI"):
        return
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=MISSING))


def _require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(MISSING)


@pytest.fixture
def demo(live_server):
    """The demo tenant of ``make run`` in the live server's (transactional) database.

    Loading takes ~20 s, and a transactional test flushes every table when it ends, so the demo is loaded per
    test: keep the tests that need it few. Loaded before the browser starts, so its ORM calls run outside
    Playwright's event loop.
    """
    _require_chromium()
    summary = load_demo()
    summary["invoice"] = load_demo_billing(summary["tenant"])
    _top_up_current_period(summary["tenant"])
    return summary


def _top_up_current_period(tenant) -> None:
    """Replay one captured call that ended two minutes ago, so the current period is never empty (the demo's
    calls fall between 08:00 and 20:00 UTC: on the first morning of a month the period would have none yet)."""
    sample = samples.load("pipeline_deepgram_openai_cartesia")
    now = timezone.now()
    ended = now - timedelta(minutes=2)
    length = sample["session"]["ended_at"] - sample["session"]["started_at"]
    agent = Agent.objects.get(tenant=tenant, name="dental-receptionist")
    session_id = f"demo-dental-receptionist-{ended:%Y%m%d}-099"
    batch = livekit.validate_livekit_metrics(
        {"session_id": session_id, "metrics": samples.shifted_metrics(sample, ended.timestamp())},
        validation.active_meter_codes(),
        now,
    )
    ingest.store_events(tenant, agent, batch, session_mode="metrics")
    Session.objects.for_tenant(tenant).filter(session_id=session_id).update(
        started_at=ended - timedelta(seconds=length),
        ended_at=ended,
        end_user_id="caller-2718",
        conversation_type="inbound_call",
    )


@pytest.fixture
def browser():
    """A headless chromium per test, started after the test's data and closed before the database flush
    (Playwright's sync API runs an event loop in this thread, where Django refuses ORM calls)."""
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield instance
        finally:
            instance.close()


def is_csp_violation(message) -> bool:
    """Chromium reports what the Content-Security-Policy refused as a console error naming the policy."""
    return message.type == "error" and "Content Security Policy" in message.text


@pytest.fixture
def csp_violations() -> list[str]:
    """What the policy refused on any page of the test; the page fixture fails the test unless it is empty."""
    return []


@pytest.fixture
def open_browser_window(browser, live_server, csp_violations):
    """``open_browser_window()`` → a page in a browser context of its own (its own cookies: another person),
    watched for JavaScript errors and CSP violations, which fail the test."""
    contexts, errors = [], []

    def open_window():
        context = browser.new_context(
            viewport=VIEWPORT, locale="en-US", timezone_id="America/New_York", accept_downloads=True
        )
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: csp_violations.append(m.text) if is_csp_violation(m) else None)
        return page

    yield open_window
    for context in contexts:
        context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"
    assert csp_violations == [], f"the Content-Security-Policy refused: {csp_violations}"


@pytest.fixture
def page(open_browser_window):
    return open_browser_window()


@pytest.fixture
def screenshot():
    """``screenshot(page, "dashboard")`` saves a full-page PNG when METERLINE_SCREENSHOTS names a folder
    (relative to the project root)."""
    wanted = os.environ.get("METERLINE_SCREENSHOTS", "")

    def save(page, name: str) -> None:
        if not wanted:
            return
        folder = Path(settings.BASE_DIR) / wanted
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / f"{name}.png"), full_page=True, animations="disabled", caret="hide")

    return save
