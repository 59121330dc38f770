"""The Dockerfile's steps performed without Docker (no engine runs on our machines): what it copies, into a
clean folder, its RUN steps there, its CMD started from there.

Differences from ``docker build``, each so that the test is fast and changes nothing outside its folder: the
base image is this machine's Python in a fresh virtualenv that sees the shared environment's installed
packages (a ``.pth`` line, which does not run that environment's own ``.pth`` files: the project's development
checkout stays invisible), so ``pip install`` finds the dependencies already there and downloads only its
build backend, as in the image; RUN steps about the operating system (``apt-get``, ``useradd``) are skipped;
console scripts in the CMD run as ``python -m``; ``USER`` and ``EXPOSE`` are ignored.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

BASE = Path(__file__).resolve().parents[2]
DOCKERFILE = BASE / "Dockerfile"
SYSTEM_STEPS = ("apt-get",)  # RUN steps about the operating system, not the project
# The test run's own settings stay out of the build, as they would stay out of `docker build`.
APP_SETTINGS = {
    "DATABASE_URL",
    "DEBUG",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "STATIC_ROOT",
    "DJANGO_SETTINGS_MODULE",
}


@dataclass
class Instruction:
    keyword: str
    argument: str


@dataclass
class Dockerfile:
    instructions: list[Instruction]

    @classmethod
    def read(cls, path: Path = DOCKERFILE) -> Dockerfile:
        """Instructions with their continuation lines joined; comments dropped."""
        instructions, pending = [], ""
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not pending and (not line or line.startswith("#")):
                continue
            if line.endswith("\\"):
                pending += line[:-1] + " "
                continue
            keyword, _, argument = (pending + line).partition(" ")
            instructions.append(Instruction(keyword.upper(), argument.strip()))
            pending = ""
        return cls(instructions)

    def all(self, keyword: str) -> list[str]:
        return [i.argument for i in self.instructions if i.keyword == keyword]

    @property
    def copies(self) -> list[tuple[list[str], str]]:
        """(sources, destination) of every COPY, relative to the build context and the WORKDIR."""
        return [copy_arguments(argument) for argument in self.all("COPY")]

    @property
    def cmd(self) -> list[str]:
        return json.loads(self.all("CMD")[-1])

    @property
    def env(self) -> dict[str, str]:
        values = {}
        for argument in self.all("ENV"):
            for pair in shlex.split(argument):
                name, _, value = pair.partition("=")
                values[name] = value
        return values


@dataclass
class Build:
    """A folder holding what the image would hold in its WORKDIR, and a virtualenv standing in for the
    image's Python."""

    folder: Path
    venv: Path
    log: list[str] = field(default_factory=list)

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def env(self, dockerfile: Dockerfile, **extra: str) -> dict[str, str]:
        clean = {
            k: v
            for k, v in os.environ.items()
            if k not in APP_SETTINGS and not k.startswith(("CELERY_", "STRIPE_", "PYTHON", "VIRTUAL_ENV"))
        }
        return {
            **clean,
            "PATH": f"{self.venv / 'bin'}:{clean.get('PATH', '/usr/bin:/bin')}",
            "VIRTUAL_ENV": str(self.venv),
            **dockerfile.env,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            **extra,
        }

    def command(self, cmd: list[str], bind: str) -> list[str]:
        """The CMD as this folder runs it: console scripts through the virtualenv's Python, on ``bind``."""
        program, *args = cmd
        if program not in ("python", "python3"):
            args = ["-m", program, *args]
        return [str(self.python), *args, "--bind", bind]


def build(dockerfile: Dockerfile, root: Path) -> Build:
    """Perform the Dockerfile's COPY and RUN steps in ``root``/app (raises with the output on failure)."""
    workdirs = dockerfile.all("WORKDIR")
    if workdirs != ["/app"]:
        raise ValueError(f"expected one WORKDIR /app, found {workdirs}")
    folder, venv = root / "app", root / "venv"
    folder.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    # The shared environment's packages, without running its .pth files (they would make the project
    # importable from its development checkout).
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    (site / "shared-packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    result = Build(folder, venv)
    for instruction in dockerfile.instructions:
        if instruction.keyword == "COPY":
            _copy(*copy_arguments(instruction.argument), folder)
        elif instruction.keyword == "RUN":
            if instruction.argument.split()[0] in SYSTEM_STEPS:
                result.log.append(f"skipped: RUN {instruction.argument}")
                continue
            done = subprocess.run(  # the Dockerfile's own shell step, as docker runs it
                ["/bin/sh", "-c", instruction.argument],
                cwd=folder,
                env=result.env(dockerfile),
                capture_output=True,
                text=True,
            )
            result.log.append(f"RUN {instruction.argument}\n{done.stdout}{done.stderr}")
            if done.returncode:
                raise RuntimeError("\n".join(result.log))
    return result


def copy_arguments(argument: str) -> tuple[list[str], str]:
    *sources, destination = shlex.split(argument)
    if any(s.startswith("--") for s in sources):
        raise ValueError(f"COPY options are not performed here: {argument}")
    return sources, destination


def _copy(sources: list[str], destination: str, folder: Path) -> None:
    """COPY semantics for project paths: a folder's contents go to the destination folder; files to a
    destination ending in ``/`` keep their names."""
    for source in sources:
        origin = BASE / source
        if not origin.exists() or BASE not in origin.resolve().parents:
            raise FileNotFoundError(f"COPY {source}: not a path in the build context")
        if origin.is_dir():
            shutil.copytree(
                origin,
                folder / destination,
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                dirs_exist_ok=True,
            )
        else:
            target = folder / destination
            target = target / origin.name if destination.endswith("/") else target
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, target)
