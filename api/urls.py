from django.urls import path

from api.budget import BudgetReadView
from api.events import EventsView
from api.livekit import LiveKitMetricsView, LiveKitUsageView
from api.sessions import SessionView
from api.usage import UsageReadView

urlpatterns = [
    path("events", EventsView.as_view(), name="api-events"),
    path("livekit/metrics", LiveKitMetricsView.as_view(), name="api-livekit-metrics"),
    path("livekit/usage", LiveKitUsageView.as_view(), name="api-livekit-usage"),
    path("usage", UsageReadView.as_view(), name="api-usage"),
    path("budget", BudgetReadView.as_view(), name="api-budget"),
    path("sessions/<path:session_id>", SessionView.as_view(), name="api-session"),
]
