"""The durable spool: one fsynced file per request, resent in order until the server has it.

Every write request is spooled *before* its first attempt (write-ahead) and deleted only after a 2xx, so a
crash or an outage at any point loses nothing; a batch that was delivered but not yet deleted is simply sent
again, which the API counts as a duplicate (ingestion is idempotent). Files are named by a monotonic clock,
so sorting the names gives the order the requests were made.

Several processes may share a spool directory (LiveKit runs each job in its own process): a sender claims a
file with a non-blocking ``flock`` and skips files another sender holds. Spools are namespaced by the key's
public id, so one agent's usage is never sent with another agent's key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meterline._core import PreparedRequest, dumps

try:  # POSIX; on other platforms senders in one process still coordinate through the client's lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger("meterline")

_SUFFIX = ".json"


@dataclass
class Entry:
    """A claimed spool item: the request, and the handle that keeps other senders off it."""

    name: str
    request: PreparedRequest


class _Spool:
    """What both spools share: a refused request is recorded with the reason, then leaves the queue."""

    def reject(
        self,
        name: str,
        request: PreparedRequest,
        status: int | None,
        problem: Any,
        *,
        items: list[Any] | None = None,
        keep_original: bool = False,
    ) -> None:
        """Record that the server refused ``request`` (or only ``items`` of it) for good; unless
        ``keep_original``, the spooled request is removed."""
        record = {
            "request": request.to_record(),
            "status": status,
            "problem": problem,
            "rejected_at": time.time(),
        }
        if items is not None:
            record["items"] = items
        self._keep_rejected(name, record)
        if not keep_original:
            self.remove(name)

    def _keep_rejected(self, name: str, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def remove(self, name: str) -> None:
        raise NotImplementedError


class MemorySpool(_Spool):
    """A non-durable stand-in (``spool_dir=False``): same ordering and resend behaviour, lost on exit."""

    durable = False

    def __init__(self) -> None:
        self._items: dict[str, PreparedRequest] = {}
        self._lock = threading.Lock()
        self._seq = 0
        self.rejected: list[dict[str, Any]] = []

    def write(self, request: PreparedRequest) -> str:
        with self._lock:
            self._seq += 1
            name = f"{self._seq:020d}"
            self._items[name] = request
            return name

    def pending(self) -> list[str]:
        with self._lock:
            return sorted(self._items)

    @contextlib.contextmanager
    def claim(self, name: str) -> Iterator[Entry | None]:
        with self._lock:
            request = self._items.get(name)
        yield Entry(name, request) if request is not None else None

    def remove(self, name: str) -> None:
        with self._lock:
            self._items.pop(name, None)

    def _keep_rejected(self, name: str, record: dict[str, Any]) -> None:
        self.rejected.append(record)


class FileSpool(_Spool):
    """Spool files under ``root`` (created 0700). Refused requests go to ``root/rejected/`` with the reason."""

    durable = True

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.rejected_dir = self.root / "rejected"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._last_ns = 0
        self._seq = 0

    def _next_name(self) -> str:
        with self._lock:
            now = max(time.time_ns(), self._last_ns + 1)
            self._last_ns = now
            self._seq += 1
            return f"{now:020d}-{os.getpid():07d}-{self._seq:06d}{_SUFFIX}"

    def _write_file(self, directory: Path, name: str, text: str) -> Path:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = directory / name
        tmp = directory / f".tmp-{name}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
        _fsync_dir(directory)
        return target

    def write(self, request: PreparedRequest) -> str:
        name = self._next_name()
        self._write_file(self.root, name, dumps(request.to_record()))
        return name

    def pending(self) -> list[str]:
        try:
            names = [n for n in os.listdir(self.root) if n.endswith(_SUFFIX) and not n.startswith(".")]
        except FileNotFoundError:
            return []
        return sorted(names)

    @contextlib.contextmanager
    def claim(self, name: str) -> Iterator[Entry | None]:
        path = self.root / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield None
            return
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    yield None  # another sender is on it
                    return
            if os.fstat(fd).st_nlink == 0:
                yield None  # delivered and removed by another sender meanwhile
                return
            with os.fdopen(os.dup(fd), "rb") as handle:
                raw = handle.read()
            try:
                request = PreparedRequest.from_record(json.loads(raw))
            except (ValueError, KeyError, TypeError) as exc:
                logger.error("meterline: unreadable spool file %s moved to rejected/: %s", path, exc)
                self.rejected_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.replace(path, self.rejected_dir / name)
                yield None
                return
            yield Entry(name, request)
        finally:
            os.close(fd)  # releases the lock

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / name)

    def _keep_rejected(self, name: str, record: dict[str, Any]) -> None:
        base = name[: -len(_SUFFIX)] if name.endswith(_SUFFIX) else name
        suffix = f"-{int(time.time() * 1000)}" if "items" in record else ""
        self._write_file(self.rejected_dir, f"{base}{suffix}{_SUFFIX}", dumps(record))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
