from django.contrib.auth import views as auth_views
from django.urls import path, register_converter, reverse_lazy

from portal.converters import SessionIdConverter
from portal.views import (
    agents,
    billing_profile,
    budget,
    credits,
    dashboard,
    invoices,
    sessions,
    team,
    usage,
    webhooks,
)

app_name = "portal"
register_converter(SessionIdConverter, "session_id")


def _password_reset_step(route: str, view, template: str, name: str, **options):
    """One page of Django's password-reset flow with our template (and the next step's URL, if any)."""
    if "success_url" in options:
        options["success_url"] = reverse_lazy(f"portal:{options['success_url']}")
    return path(route, view.as_view(template_name=f"portal/{template}.html", **options), name=name)


urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("usage/", usage.usage, name="usage"),
    path("usage.csv", usage.usage_csv, name="usage-csv"),
    path("sessions/", sessions.sessions, name="sessions"),
    path("sessions/<session_id:session_id>/", sessions.session_detail, name="session"),
    path("invoices/", invoices.invoices, name="invoices"),
    path("invoices/<int:pk>/", invoices.invoice_detail, name="invoice"),
    path("invoices/<int:pk>/print/", invoices.invoice_print, name="invoice-print"),
    path("invoices/<int:pk>/pdf/", invoices.invoice_pdf, name="invoice-pdf"),
    path("credit-notes/<int:pk>/", invoices.credit_note, name="credit-note"),
    path("credit-notes/<int:pk>/pdf/", invoices.credit_note_pdf, name="credit-note-pdf"),
    path("agents/", agents.agents, name="agents"),
    path("agents/new/", agents.agent_create, name="agent-create"),
    path("keys/new/", agents.key_create, name="key-create"),
    path("keys/<int:pk>/revoke/", agents.key_revoke, name="key-revoke"),
    path("budget/", budget.budget, name="budget"),
    path("credits/", credits.credits_page, name="credits"),
    path("billing-profile/", billing_profile.billing_profile, name="billing-profile"),
    path("webhooks/", webhooks.webhooks_page, name="webhooks"),
    path("webhooks/new/", webhooks.endpoint_create, name="webhook-create"),
    path("webhooks/<int:pk>/", webhooks.endpoint_detail, name="webhook"),
    path("webhooks/<int:pk>/enable/", webhooks.endpoint_enable, name="webhook-enable"),
    path("webhooks/<int:pk>/disable/", webhooks.endpoint_disable, name="webhook-disable"),
    path("webhooks/<int:pk>/delete/", webhooks.endpoint_delete, name="webhook-delete"),
    path("webhooks/<int:pk>/roll-secret/", webhooks.endpoint_roll_secret, name="webhook-roll"),
    path("webhooks/<int:pk>/ping/", webhooks.endpoint_ping, name="webhook-ping"),
    path(
        "webhooks/<int:pk>/deliveries/<int:delivery_pk>/resend/",
        webhooks.delivery_resend,
        name="webhook-resend",
    ),
    path("team/", team.team, name="team"),
    path("team/invitations/", team.invitation_create, name="invitation-create"),
    path("team/invitations/<int:pk>/revoke/", team.invitation_revoke, name="invitation-revoke"),
    path("invite/<str:token>/", team.invitation, name="invitation"),
    path("team/<int:pk>/role/", team.member_role, name="member-role"),
    path("team/<int:pk>/remove/", team.member_remove, name="member-remove"),
    path("switch/", team.switch_tenant, name="switch-tenant"),
    path("login/", auth_views.LoginView.as_view(template_name="portal/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    _password_reset_step(
        "password-reset/",
        auth_views.PasswordResetView,
        "password_reset",
        "password-reset",
        email_template_name="portal/password_reset_email.txt",
        success_url="password-reset-done",
    ),
    _password_reset_step(
        "password-reset/sent/", auth_views.PasswordResetDoneView, "password_reset_done", "password-reset-done"
    ),
    _password_reset_step(
        "password-reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView,
        "password_reset_confirm",
        "password-reset-confirm",
        success_url="password-reset-complete",
    ),
    _password_reset_step(
        "password-reset/complete/",
        auth_views.PasswordResetCompleteView,
        "password_reset_complete",
        "password-reset-complete",
    ),
]
