"""The Docker image builds and serves a styled portal, and the wheel it installs is complete (issue 18 item 1).

No Docker engine runs here: the image is the Dockerfile's steps performed in a temporary folder
(tests/deploy/dockerfile.py), started with its CMD and production settings.
"""

from __future__ import annotations

import subprocess
import tomllib
import zipfile
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.template import engines

from tests.deploy.dockerfile import BASE, Dockerfile
from tests.deploy.pages import assets

HTTPS = {"X-Forwarded-Proto": "https"}  # TLS ends at the load balancer (settings: SECURE_PROXY_SSL_HEADER)


def declared_packages() -> set[str]:
    """The top-level packages of ``[tool.setuptools.packages.find]`` in pyproject.toml."""
    pyproject = tomllib.loads((BASE / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return {pattern.removesuffix("*") for pattern in patterns}


def project_files(package: str) -> set[str]:
    return {
        path.relative_to(BASE).as_posix()
        for path in (BASE / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def test_the_wheel_the_dockerfile_and_the_settings_name_the_same_apps():
    apps = {name.split(".")[0] for name in settings.INSTALLED_APPS if (BASE / name.split(".")[0]).is_dir()}
    copied = {source for sources, _ in Dockerfile.read().copies for source in sources}

    assert declared_packages() == apps | {"config"}
    assert {p for p in copied if (BASE / p / "__init__.py").exists()} == declared_packages()


def test_every_template_folder_django_searches_belongs_to_a_packaged_app():
    """A template outside the packages would be missing from the wheel and the image."""
    folders = [Path(d) for engine in engines.all() for d in engine.template_dirs]
    ours = [d for d in folders if BASE in d.resolve().parents and "site-packages" not in d.resolve().parts]

    assert ours, "no template folder of the project found"
    assert all(d.relative_to(BASE).parts[0] in declared_packages() for d in ours), ours


@pytest.mark.slow
def test_the_built_wheel_holds_every_file_of_every_app_templates_and_static_files_included(image, tmp_path):
    subprocess.run(
        [image.python, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", tmp_path, image.folder],
        check=True,
        capture_output=True,
        env=image.env(Dockerfile.read()),
    )
    (wheel,) = tmp_path.glob("meterline-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    expected = set().union(*(project_files(p) for p in declared_packages()))

    assert expected - inside == set()
    assert {"portal/static/portal/app.css", "portal/templates/portal/base.html"} <= inside
    assert any(name.startswith("billing/templates/admin/billing/") for name in inside)


@pytest.mark.slow
@pytest.mark.django_db  # the server uses the test database, created only for tests that ask for it
def test_the_image_serves_the_portal_styled_with_debug_off(image_server):
    page = httpx.get(f"{image_server.url}/login/", headers=HTTPS)
    assert page.status_code == 200
    stylesheets = [
        a.url for a in assets(page.text) if a.rel == "stylesheet" and a.url.startswith("/static/portal/")
    ]
    assert len(stylesheets) == 1, page.text[:2000]

    css = httpx.get(image_server.url + stylesheets[0], headers=HTTPS)

    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert css.text == (BASE / "portal/static/portal/app.css").read_text()
    assert stylesheets[0] != "/static/portal/app.css", "collectstatic's hashed copy is linked"
