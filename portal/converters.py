"""A URL segment that carries any stored session id, and gives it back unchanged.

Session ids stored before ingest enforced an alphabet may hold slashes, dots, ``?``, ``#``, ``%``, newlines,
spaces or any Unicode (issue 12). Django's ``path`` converter cannot reverse an id with a newline, and an id
such as ``..`` or ``a/../b`` would be rewritten by the browser before it reached us. So the id is
percent-encoded into one segment here — slashes included, and a segment of dots too — and Django's reverse
encodes that again; the server decodes once and ``to_python`` decodes the rest. Ids made of the characters a
URL path allows (``call-42``, ``room_7.a``) read the same in the address bar.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

# What Django's reverse leaves as it is in a path, less the slash: only these stay readable.
_READABLE = "-._~!$&'()*+,;=:@"


class SessionIdConverter:
    regex = "[^/]+"

    def to_python(self, value: str) -> str:
        session_id = unquote(value)
        if "\x00" in session_id:  # PostgreSQL text cannot hold NUL, so no stored id has one: not found
            raise ValueError("NUL in a session id")
        return session_id

    def to_url(self, value: str) -> str:
        segment = quote(value, safe=_READABLE)
        if segment.strip(".") == "":  # "." and ".." are path steps to a browser, even as %2E
            segment = segment.replace(".", "%2E")
        return segment
