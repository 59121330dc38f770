from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from portal.views import agents, budget, dashboard, invoices, sessions, team, usage, webhooks

app_name = "portal"

urlpatterns = [
    path("", dashboard.dashboard, name="dashboard"),
    path("usage/", usage.usage, name="usage"),
    path("usage.csv", usage.usage_csv, name="usage-csv"),
    path("sessions/", sessions.sessions, name="sessions"),
    path("sessions/<path:session_id>/", sessions.session_detail, name="session"),
    path("invoices/", invoices.invoices, name="invoices"),
    path("invoices/<int:pk>/", invoices.invoice_detail, name="invoice"),
    path("invoices/<int:pk>/print/", invoices.invoice_print, name="invoice-print"),
    path("invoices/<int:pk>/pdf/", invoices.invoice_pdf, name="invoice-pdf"),
    path("agents/", agents.agents, name="agents"),
    path("agents/new/", agents.agent_create, name="agent-create"),
    path("keys/new/", agents.key_create, name="key-create"),
    path("keys/<int:pk>/revoke/", agents.key_revoke, name="key-revoke"),
    path("budget/", budget.budget, name="budget"),
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
    path(
        "password-reset/",
        auth_views.PasswordResetView.as_view(
            template_name="portal/password_reset.html",
            email_template_name="portal/password_reset_email.txt",
            success_url=reverse_lazy("portal:password-reset-done"),
        ),
        name="password-reset",
    ),
    path(
        "password-reset/sent/",
        auth_views.PasswordResetDoneView.as_view(template_name="portal/password_reset_done.html"),
        name="password-reset-done",
    ),
    path(
        "password-reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(
            template_name="portal/password_reset_confirm.html",
            success_url=reverse_lazy("portal:password-reset-complete"),
        ),
        name="password-reset-confirm",
    ),
    path(
        "password-reset/complete/",
        auth_views.PasswordResetCompleteView.as_view(template_name="portal/password_reset_complete.html"),
        name="password-reset-complete",
    ),
]
