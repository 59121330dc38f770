"""Headers every page sends (DESIGN §16): a Content-Security-Policy that allows no inline script or style
(and pages that need none), ``Cache-Control: private, no-store`` for logged-in people, and a deployment
check that stays clean. The browser proves the pages still work under the policy (tests/browser)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib import admin
from django.test import Client
from django.urls import reverse

from tenants.models import APIKey
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>", re.I)
HANDLER_ATTRIBUTE = re.compile(r"<[a-z][^>]*\son[a-z]+\s*=", re.I)
STYLE_ATTRIBUTE = re.compile(r"<[a-z][^>]*\sstyle\s*=", re.I)
STYLE_ELEMENT = re.compile(r"<style(?P<attributes>[^>]*)>", re.I)


def policy(response) -> dict[str, list[str]]:
    header = response.headers["Content-Security-Policy"]
    return {d.split()[0]: d.split()[1:] for d in (p.strip() for p in header.split(";")) if d}


def assert_strict_policy_and_nothing_inline(response, url: str) -> None:
    directives = policy(response)
    assert directives["script-src"] == ["'self'"], url
    assert "'unsafe-inline'" not in directives["style-src"], url
    assert directives["default-src"] == ["'self'"], url
    assert directives["object-src"] == directives["frame-ancestors"] == ["'none'"], url
    if not response["Content-Type"].startswith("text/html"):
        return
    page = response.content.decode()
    assert not INLINE_SCRIPT.search(page), (url, INLINE_SCRIPT.search(page).group(0))
    assert not HANDLER_ATTRIBUTE.search(page), (url, HANDLER_ATTRIBUTE.search(page).group(0))
    assert not STYLE_ATTRIBUTE.search(page), (url, STYLE_ATTRIBUTE.search(page).group(0))
    assert "javascript:" not in page, url
    nonces = [
        n.removeprefix("'nonce-").rstrip("'") for n in directives["style-src"] if n.startswith("'nonce-")
    ]
    for element in STYLE_ELEMENT.finditer(page):
        assert nonces and f'nonce="{nonces[0]}"' in element.group("attributes"), (url, element.group(0))


@pytest.fixture
def owner_client(world, client):
    client.force_login(world.users[0])
    return client


def portal_urls(world) -> list[str]:
    invoice = world.invoices[0].pk
    key_pk = APIKey.objects.get(tenant=world.tenants[0]).pk
    return [
        "/",
        "/usage/",
        "/usage/?group_by=session",
        "/sessions/",
        "/sessions/call-0/",
        "/invoices/",
        f"/invoices/{invoice}/",
        f"/invoices/{invoice}/print/",
        "/agents/",
        f"/keys/{key_pk}/revoke/",
        "/budget/",
        "/team/",
    ]


def test_portal_pages_have_a_strict_policy_and_no_inline_code_and_are_never_stored(world, owner_client):
    for url in [*portal_urls(world), f"/invoices/{world.invoices[0].pk}/pdf/", "/usage.csv"]:
        response = owner_client.get(url)
        assert response.status_code == 200, url
        assert_strict_policy_and_nothing_inline(response, url)
        directives = {d.strip() for d in response["Cache-Control"].split(",")}
        assert {"private", "no-store"} <= directives and "public" not in directives, url


def test_pages_for_visitors_have_the_policy_too(db):
    visitor = Client()
    for url, status in [
        ("/login/", 200),
        ("/password-reset/", 200),
        ("/invite/not-a-token/", 404),
        ("/no-such-page/", 404),
        ("/admin/login/", 200),
        ("/api/docs/", 200),
        ("/api/v1/usage", 401),
        ("/healthz", None),
    ]:
        response = visitor.get(url)
        assert status is None or response.status_code == status, url
        assert_strict_policy_and_nothing_inline(response, url)


def test_the_csrf_failure_page_has_the_policy_and_nothing_inline(db):
    response = Client(enforce_csrf_checks=True).post("/login/", {"username": "a", "password": "b"})
    assert response.status_code == 403
    assert_strict_policy_and_nothing_inline(response, "csrf failure")
    assert "This form has expired" in response.content.decode()


def test_the_api_docs_load_their_setup_script_as_a_file(db):
    page = Client().get("/api/docs/").content.decode()
    script_url = re.search(r'<script src="([^"]*\?[^"]*script=[^"]*)"', page).group(1).replace("&amp;", "&")
    script = Client().get(script_url)
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert "SwaggerUIBundle(" in script.content.decode() and "/api/schema/" in script.content.decode()


def test_every_admin_page_has_a_strict_policy_no_inline_code_and_is_never_stored(world, client):
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    MembershipFactory(tenant=world.tenants[0])
    urls = [reverse("admin:index"), reverse("admin:billing_invoice_preview")]
    for model in admin.site._registry:
        info = (model._meta.app_label, model._meta.model_name)
        urls.append(reverse("admin:{}_{}_changelist".format(*info)))
        obj = model._default_manager.first()
        if obj is not None:
            urls.append(reverse("admin:{}_{}_change".format(*info), args=[obj.pk]))
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        assert_strict_policy_and_nothing_inline(response, url)
        assert {"private", "no-store"} <= {d.strip() for d in response["Cache-Control"].split(",")}, url


def test_the_deployment_check_is_clean_with_debug_off():
    env = {
        **os.environ,
        "DEBUG": "0",
        "SECRET_KEY": "k" * 20 + "-deploy-check-" + "q7Zp" * 10,
        "DATABASE_URL": os.environ.get("DATABASE_URL", "postgresql://unused@127.0.0.1:1/unused"),
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=Path(settings.BASE_DIR),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
