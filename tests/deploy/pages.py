"""What a page makes the browser fetch: stylesheets, icons, scripts and images."""

from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser


@dataclass(frozen=True)
class Asset:
    tag: str  # link, script or img
    rel: str  # a link's rel ("stylesheet", "icon"), else ""
    url: str

    @property
    def expected_types(self) -> tuple[str, ...]:
        """The content types a browser accepts for this asset."""
        if self.tag == "script":
            return ("text/javascript", "application/javascript")
        if self.tag == "link" and "stylesheet" in self.rel:
            return ("text/css",)
        return ("image/",)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[Asset] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        url = values.get("href" if tag == "link" else "src", "")
        if tag in ("link", "script", "img") and url:
            self.found.append(Asset(tag, values.get("rel", ""), url))


def assets(html: str) -> list[Asset]:
    collector = _Collector()
    collector.feed(html)
    return collector.found
