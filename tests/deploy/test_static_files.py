"""Static files under the production setup (issue 12 item 9): with DEBUG off, every stylesheet, script and
image the admin, the portal and the API docs reference answers 200 with its content type, from the hashed,
compressed copies collectstatic wrote in the image, cached for good."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import httpx
import pytest

from tests.deploy.pages import assets

HTTPS = {"X-Forwarded-Proto": "https"}
PAGES = ["/admin/login/", "/login/", "/api/docs/"]

# The server processes use the test database, which pytest-django creates only for tests that ask for it.
pytestmark = [pytest.mark.slow, pytest.mark.django_db]


@pytest.mark.parametrize("path", PAGES)
def test_every_asset_a_page_references_answers_with_its_content_type(image_server, path):
    page = httpx.get(image_server.url + path, headers=HTTPS)
    assert page.status_code == 200
    local = [a for a in assets(page.text) if urljoin(path, a.url).startswith("/")]
    assert any(a.url.startswith("/static/") for a in local), f"{path} references no static file"

    for asset in local:
        response = httpx.get(image_server.url + urljoin(path, asset.url), headers=HTTPS)

        assert response.status_code == 200, asset
        assert response.headers["content-type"].startswith(asset.expected_types), (asset, response.headers)
        assert response.content, asset


def test_static_files_are_hashed_compressed_and_cached_for_good(image_server):
    page = httpx.get(image_server.url + "/admin/login/", headers=HTTPS)
    stylesheet = next(a.url for a in assets(page.text) if a.rel == "stylesheet")

    plain = httpx.get(image_server.url + stylesheet, headers={**HTTPS, "Accept-Encoding": "identity"})
    compressed = httpx.get(image_server.url + stylesheet, headers={**HTTPS, "Accept-Encoding": "gzip"})

    assert re.search(r"\.[0-9a-f]{12}\.css$", stylesheet), f"{stylesheet} is not collectstatic's hashed name"
    assert "immutable" in plain.headers["cache-control"]
    assert compressed.headers.get("content-encoding") == "gzip"
    assert compressed.text == plain.text  # httpx decodes the gzip body


def test_an_unknown_static_file_is_a_404(image_server):
    response = httpx.get(image_server.url + "/static/portal/missing.css", headers=HTTPS)

    assert response.status_code == 404
