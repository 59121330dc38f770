"""What a write transaction changed in a tenant's usage, and the hooks that hear of it inside that transaction.

Every path that changes usage — a batch stored (usage.ingest), an event retracted or replaced
(usage.corrections) — ends by calling :func:`run_hooks` with a :class:`UsageChange` before it commits. Apps above
usage register their hooks once, from their ``AppConfig.ready`` (billing prices each call, spend control queues
a check), so no path can skip them, and a correction reaches them exactly as new usage does: the events that now
count, and those that no longer do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import OperationalError

from tenants.models import Agent, Tenant
from usage.validation import EventRecord

_RETRYABLE_SQLSTATES = {"40P01", "40001"}  # deadlock detected, serialization failure
T = TypeVar("T")


@dataclass(frozen=True)
class UsageChange:
    """``stored``: the events the transaction inserted (duplicates and conflicts excluded); ``retracted``: the
    stored events it retracted, as they were stored (usage.corrections). Each in event-id order (code-point
    order: the order a batch's events were inserted in, which is its receipt order for whatever depends on
    order, such as a tier position)."""

    stored: Sequence[EventRecord] = ()
    retracted: Sequence[EventRecord] = ()

    def __bool__(self) -> bool:
        return bool(self.stored or self.retracted)


# Called inside the write transaction with what it changed. A layer above usage (billing) passes one in to keep
# what it derives from usage exact and read-your-writes; what it returns is added to the response body. It
# raising rolls the whole change back.
UsageHook = Callable[[Tenant, Agent, UsageChange], dict[str, Any] | None]

_HOOKS: list[UsageHook] = []


def register_stored_hook(hook: UsageHook) -> None:
    """Run ``hook`` in every transaction that changes usage (from an ``AppConfig.ready``; once per hook)."""
    if hook not in _HOOKS:
        _HOOKS.append(hook)


def run_hooks(
    tenant: Tenant, agent: Agent, change: UsageChange, extra: UsageHook | None = None
) -> dict[str, Any]:
    """The registered hooks, then ``extra``, on ``change`` (nothing when it is empty); their answers merged."""
    answers: dict[str, Any] = {}
    if change:
        for hook in [*_HOOKS, *([extra] if extra else [])]:
            answers.update(hook(tenant, agent, change) or {})
    return answers


def retrying(work: Callable[[], T], attempts: int = 3) -> T:
    """``work()`` (one transaction), run again up to ``attempts`` times in all when PostgreSQL broke a deadlock
    or a serialization conflict by rolling it back."""
    for attempt in range(attempts):
        try:
            return work()
        except OperationalError as exc:
            sqlstate = getattr(exc.__cause__, "sqlstate", None)
            if sqlstate not in _RETRYABLE_SQLSTATES or attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")
