from django.urls import path

from billing.api import views

urlpatterns = [
    path("usage", views.UsageReadView.as_view(), name="api-usage"),
    path("budget", views.BudgetReadView.as_view(), name="api-budget"),
    path("sessions/<path:session_id>", views.SessionView.as_view(), name="api-session"),
]
