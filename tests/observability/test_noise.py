"""Issue 18 item 12, the noise at start and on admin pages (docs/decisions/009-observability.md)."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from django.conf import settings


def test_a_management_command_prints_no_axes_banner():
    env = dict(os.environ, DEBUG="1")
    env.pop("LOG_FORMAT", None)
    done = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    output = done.stdout + done.stderr
    assert "AXES" not in output
    assert "System check identified no issues" in output


@pytest.mark.parametrize("page", ["/admin/login/", "/login/"])
def test_the_favicon_a_browser_asks_for_is_served(live_server, page):
    with httpx.Client(base_url=live_server.url, follow_redirects=True, timeout=30) as client:
        assert client.get(page).status_code == 200
        response = client.get("/favicon.ico")
    assert response.status_code == 200
    assert response.history and response.url.path.startswith(f"/{settings.STATIC_URL.strip('/')}/")
    assert response.content[:4] == b"\x00\x00\x01\x00"  # an ICO file's signature
