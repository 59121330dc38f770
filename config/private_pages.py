"""``Cache-Control: private, no-store`` on every response to a logged-in person (DESIGN §16).

Portal and admin pages show what only that person may see (an API key is shown once, invoices, usage), so
no shared cache may keep them and the browser must not store them for its back button or disk cache.
"""

from __future__ import annotations

from django.utils.cache import patch_cache_control


class PrivatePagesMiddleware:
    """Placed after AuthenticationMiddleware, so ``request.user`` is known; the admin's own ``never_cache``
    headers already include both directives and are kept."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            patch_cache_control(response, private=True, no_store=True)
        return response
