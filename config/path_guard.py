"""A URL path holding NUL names nothing: answer 404 before any view turns it into a query.

PostgreSQL cannot store NUL (0x00) in text, so no stored identifier holds one, and a query with one fails in
the database driver (a 500) wherever a path segment is looked up: ``/api/v1/sessions/%00``, the portal's
``/sessions/%00/``, and any route added later. The API answers as the API does (problem+json).
"""

from __future__ import annotations

from collections.abc import Callable

from django.http import Http404, HttpRequest, HttpResponse

from api.problems import not_found


class RefuseNulInPath:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path_info:
            if request.path_info.startswith("/api/"):
                return not_found(request)
            raise Http404("No resource has this path.")
        return self.get_response(request)
