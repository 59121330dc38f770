from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from config.health import healthz
from payments.webhooks import stripe_webhook

admin.site.site_header = "Meterline admin"
admin.site.site_title = "Meterline admin"
admin.site.index_title = "Platform administration"
# The billing tables need the width the sidebar takes at 1,366 px (docs/decisions/012-billing-admin.md).
admin.site.enable_nav_sidebar = False

urlpatterns = [
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("stripe/webhook", stripe_webhook, name="stripe-webhook"),
    path("api/v1/", include("api.urls")),
    path(
        "api/schema/",
        SpectacularAPIView.as_view(authentication_classes=[], permission_classes=[]),
        name="api-schema",
    ),
    path(
        "api/docs/",
        # The split view serves its initialisation script as a file: the CSP allows no inline script.
        SpectacularSwaggerSplitView.as_view(
            url_name="api-schema",
            template_name="api/swagger_ui.html",
            authentication_classes=[],
            permission_classes=[],
        ),
        name="api-docs",
    ),
    path("", include("portal.urls")),
]
