"""The outbox: an event commits with the change it reports and reaches its subscribers once committed."""

import pytest
from django.db import transaction

from notifications import outbox
from notifications.models import Event
from tests.factories import TenantFactory


@pytest.fixture
def received():
    """Events handed to a subscriber of ``test.happened``, in order."""
    seen: list[Event] = []
    outbox.subscribe("test.happened", seen.append)
    yield seen
    outbox.unsubscribe("test.happened", seen.append)


@pytest.mark.django_db
def test_an_event_reaches_its_subscribers_after_the_transaction_commits(
    received, django_capture_on_commit_callbacks
):
    tenant = TenantFactory()
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        event = outbox.record(tenant.pk, "test.happened", {"n": 1})
        assert received == []  # not before the commit
    assert [(e.pk, e.data) for e in received] == [(event.pk, {"n": 1})]
    assert Event.objects.get(pk=event.pk).dispatched_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_change_leaves_no_event_and_notifies_no_one(received):
    tenant = TenantFactory()
    with pytest.raises(RuntimeError), transaction.atomic():
        outbox.record(tenant.pk, "test.happened", {"n": 1})
        raise RuntimeError("the change failed")
    assert Event.objects.count() == 0 and received == []


@pytest.mark.django_db
def test_a_failed_subscriber_leaves_the_event_for_the_sweep_which_delivers_it_once(
    received, django_capture_on_commit_callbacks
):
    failures = iter([RuntimeError("receiver down")])

    def flaky(event: Event) -> None:
        for failure in failures:
            raise failure

    outbox.subscribe("test.happened", flaky)
    try:
        tenant = TenantFactory()
        with django_capture_on_commit_callbacks(execute=True):
            event = outbox.record(tenant.pk, "test.happened", {})
        assert Event.objects.get(pk=event.pk).dispatched_at is None

        later = event.created_at + outbox.DISPATCH_GRACE * 2
        assert outbox.dispatch_pending(now=later) == 1
        assert outbox.dispatch_pending(now=later) == 0
    finally:
        outbox.unsubscribe("test.happened", flaky)
    assert Event.objects.get(pk=event.pk).dispatched_at is not None
    # The other subscriber saw it on each attempt: subscribers are called at least once, so they are idempotent.
    assert [e.pk for e in received] == [event.pk, event.pk]


@pytest.mark.django_db
def test_events_nobody_subscribes_to_are_still_recorded_and_marked_dispatched(
    django_capture_on_commit_callbacks,
):
    tenant = TenantFactory()
    with django_capture_on_commit_callbacks(execute=True):
        event = outbox.record(tenant.pk, "nobody.listens", {"x": "y"})
    assert Event.objects.get(pk=event.pk).dispatched_at is not None
