"""Payments' tasks: finalization queues the Stripe sync through the outbox; a real worker syncs, retries and
reconciles."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.test import RequestFactory
from django.utils import timezone

from billing.models import Invoice
from notifications.models import Event
from payments import stripe_sync, tasks
from payments.admin import retry_stripe_sync
from tests.payments.stripe_world import (
    Status,
    SyncState,
    assert_one_faithful_copy,
    billed_tenant,
    finalized,
    finalized_while_stripe_was_not_configured,
    typical_usage,
    wait_for,
)


@pytest.mark.django_db
def test_nothing_is_sent_while_stripe_is_not_configured(
    double, plan, settings, django_capture_on_commit_callbacks, eager_tasks
):
    settings.STRIPE_API_KEY = ""
    with django_capture_on_commit_callbacks(execute=True):
        invoice = finalized(billed_tenant(plan), typical_usage())
    assert Event.objects.get(type="invoice.finalized").dispatched_at is not None
    assert stripe_sync.sync_invoice(invoice.pk) == SyncState.NOT_SYNCED
    assert double.requests == []


@pytest.mark.django_db
def test_finalization_queues_the_stripe_sync_once_the_transaction_commits(
    double, plan, django_capture_on_commit_callbacks, eager_tasks
):
    with django_capture_on_commit_callbacks(execute=False) as queued:
        invoice = finalized(billed_tenant(plan), typical_usage())
    assert double.requests == []  # nothing before the commit
    for callback in queued:
        callback()
    assert Invoice.objects.get(pk=invoice.pk).sync_state == SyncState.SYNCED
    assert len(double.invoices) == 1


@pytest.mark.slow
def test_sync_retry_and_reconcile_through_a_real_worker(stripe_env, celery_worker, plan, settings):
    double = stripe_env
    invoice = finalized_while_stripe_was_not_configured(settings, billed_tenant(plan), typical_usage())
    # three 500s exhaust the SDK's tries: the task fails once, then Celery's backoff retry completes it
    fault = double.inject(r"/v1/invoices", "POST", "500", times=3)

    assert tasks.sync_invoice_to_stripe.delay(invoice.pk).get(timeout=60) == SyncState.SYNCED
    assert fault.fired == 3
    assert_one_faithful_copy(double, invoice)

    # the reconcile beat queues an invoice finalized while its task was lost, and applies a missed payment
    missed = finalized_while_stripe_was_not_configured(
        settings, billed_tenant(plan), typical_usage(), now=timezone.now() - timedelta(hours=1)
    )
    double.transition(invoice.stripe_invoice_id, "pay")
    # run here as beat would start it; the sync it queues goes through the broker to the worker (a task queued
    # from inside the test worker would go to the default queue, which that worker does not consume)
    result = tasks.reconcile_stripe.apply().get()

    assert result == {"queued": 1, "moved": 1}
    wait_for(lambda: Invoice.objects.get(pk=missed.pk).sync_state == SyncState.SYNCED)
    assert_one_faithful_copy(double, missed)
    invoice.refresh_from_db()
    assert invoice.status == Status.PAID

    # a sync Stripe refused, retried from the admin once the cause is fixed: the worker completes it
    refused = finalized_while_stripe_was_not_configured(settings, billed_tenant(plan), typical_usage())
    settings.STRIPE_API_KEY = "sk_live_wrong"
    assert stripe_sync.sync_invoice(refused.pk) == SyncState.FAILED
    settings.STRIPE_API_KEY = "sk_test_meterline"
    modeladmin = mock.Mock()
    retry_stripe_sync(modeladmin, RequestFactory().post("/"), Invoice.objects.filter(pk=refused.pk))
    assert modeladmin.message_user.call_args.args[1] == "Queued the Stripe sync of 1 invoice(s)."
    wait_for(lambda: Invoice.objects.get(pk=refused.pk).sync_state == SyncState.SYNCED)
    assert_one_faithful_copy(double, refused)


@pytest.mark.slow
def test_finalizing_an_invoice_queues_its_sync_and_a_worker_delivers_it(stripe_env, celery_worker, plan):
    double = stripe_env
    invoice = finalized(
        billed_tenant(plan), typical_usage()
    )  # commits: transactional test, so on_commit runs

    wait_for(lambda: Invoice.objects.get(pk=invoice.pk).sync_state == SyncState.SYNCED, timeout=60)
    assert_one_faithful_copy(double, invoice)
