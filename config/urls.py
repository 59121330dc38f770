from django.contrib import admin
from django.templatetags.static import static
from django.urls import include, path
from django.utils.functional import lazy
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config.health import healthz
from observability.views import metrics_view
from payments.webhooks import stripe_webhook

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("metrics", metrics_view, name="metrics"),
    # Browsers ask for /favicon.ico on pages that link no icon (the admin's); resolved per request so that it
    # follows the static storage's hashed name.
    path("favicon.ico", RedirectView.as_view(url=lazy(static, str)("portal/favicon.ico")), name="favicon"),
    path("stripe/webhook", stripe_webhook, name="stripe-webhook"),
    path("api/v1/", include("api.urls")),
    path(
        "api/schema/",
        SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]),
        name="api-schema",
    ),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(
            url_name="api-schema", authentication_classes=[], permission_classes=[]
        ),
        name="api-docs",
    ),
    path("", include("portal.urls")),
]
