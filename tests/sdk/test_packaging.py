"""The SDK is ready to publish (issue 18.3): the sdist and wheel PyPI would receive build without deprecation
warnings, pass ``twine check --strict``, carry the licence and README, and the wheel installs into a fresh
virtualenv where ``meterline.__version__`` is the version in ``_version.py``."""

from __future__ import annotations

import email.parser
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds in an isolated environment (setuptools from the package index)
SDK = Path(__file__).resolve().parents[2] / "sdk" / "python"


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """Build from a copy, so the build's own folders (build/, *.egg-info) never land in the working tree."""
    work = tmp_path_factory.mktemp("sdk-build")
    source = work / "src"
    shutil.copytree(SDK, source, ignore=shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(work / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return work / "dist", output


def version_in_source() -> str:
    match = re.fullmatch(r'__version__ = "([^"]+)"\n', (SDK / "src/meterline/_version.py").read_text())
    assert match, "_version.py holds the single source of the version"
    return match.group(1)


def test_the_build_prints_no_deprecation(built):
    _, output = built
    assert "deprecat" not in output.lower(), [line for line in output.splitlines() if "eprecat" in line]


def test_twine_accepts_the_sdist_and_the_wheel(built):
    dist, _ = built
    files = sorted(dist.iterdir())
    version = version_in_source()
    assert [f.name for f in files] == [
        f"meterline_sdk-{version}-py3-none-any.whl",
        f"meterline_sdk-{version}.tar.gz",
    ]
    check = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("PASSED") == 2


def test_the_wheel_declares_its_licence_and_readme(built):
    dist, _ = built
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info_dir = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(f"{info_dir}/METADATA").decode())
        licence = archive.read(f"{info_dir}/licenses/LICENSE").decode()
    assert metadata["Name"] == "meterline-sdk"
    assert metadata["Version"] == version_in_source()
    assert metadata["License-Expression"] == "MIT"
    assert licence == (SDK / "LICENSE").read_text() and licence.startswith("MIT License")
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload().strip() == (SDK / "README.md").read_text().strip()
    assert "meterline/py.typed" in names


def test_the_sdist_carries_what_the_readme_links_to(built):
    dist, _ = built
    (sdist,) = dist.glob("*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"LICENSE", "README.md", "pyproject.toml", "examples/livekit_agent.py"} <= names


def test_the_wheel_installs_into_a_fresh_virtualenv(built, tmp_path):
    dist, _ = built
    (wheel,) = dist.glob("*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    install = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr[-3000:]
    probe = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "import meterline; print(meterline.__version__, meterline.__file__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    version, location = probe.stdout.split()
    assert version == version_in_source()
    assert Path(location).is_relative_to(venv), "imported from the fresh venv, not from the source tree"
