from django.urls import path

from usage.api import views

urlpatterns = [
    path("events", views.EventsView.as_view(), name="api-events"),
    path("livekit/metrics", views.LiveKitMetricsView.as_view(), name="api-livekit-metrics"),
    path("livekit/usage", views.LiveKitUsageView.as_view(), name="api-livekit-usage"),
]
