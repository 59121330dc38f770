from django.urls import path, re_path, register_converter

from api.balance import AuthorizationExtendView, AuthorizationReleaseView, AuthorizationsView, BalanceView
from api.budget import BudgetReadView
from api.events import EventRetractView, EventsView
from api.livekit import LiveKitMetricsView, LiveKitUsageView
from api.problems import not_found
from api.sessions import SessionView
from api.usage import UsageReadView
from usage import validation


class StoredSessionId:
    """Any session id that may be stored, newlines included (Django's ``path`` stops at one): sessions stored
    before the identifier alphabet was enforced stay readable. The view decides what a write may use."""

    regex = r"[\s\S]+"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(StoredSessionId, "api_session_id")


class EventId(StoredSessionId):
    """An event id in the identifier alphabet (decision 007; the view refuses "." and ".."). Any other path
    segment names no event: the catch-all answers 404."""

    regex = rf"[{validation.IDENTIFIER_CHARACTERS}]{{1,{validation.MAX_ID_LENGTH}}}"


register_converter(EventId, "api_event_id")

urlpatterns = [
    path("events", EventsView.as_view(), name="api-events"),
    path("events/<api_event_id:event_id>/retract", EventRetractView.as_view(), name="api-event-retract"),
    path("livekit/metrics", LiveKitMetricsView.as_view(), name="api-livekit-metrics"),
    path("livekit/usage", LiveKitUsageView.as_view(), name="api-livekit-usage"),
    path("usage", UsageReadView.as_view(), name="api-usage"),
    path("budget", BudgetReadView.as_view(), name="api-budget"),
    path("balance", BalanceView.as_view(), name="api-balance"),
    path("authorizations", AuthorizationsView.as_view(), name="api-authorizations"),
    path(
        "authorizations/<int:hold_id>/extend",
        AuthorizationExtendView.as_view(),
        name="api-authorization-extend",
    ),
    path(
        "authorizations/<int:hold_id>/release",
        AuthorizationReleaseView.as_view(),
        name="api-authorization-release",
    ),
    path("sessions/<api_session_id:session_id>", SessionView.as_view(), name="api-session"),
    # Any other path under /api/v1/ is answered as the API answers, not with the portal's HTML page.
    re_path(r"[\s\S]*", not_found),
]
