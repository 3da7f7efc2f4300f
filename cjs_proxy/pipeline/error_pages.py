"""Error pages: ``<status>.html``, then ``default.html``, then plain text.

Pages are read once when a worker starts, so answering an error costs no disk access.
Hipache's names (``error_<status>.html``, ``error_default.html``) are accepted too, so
an operator's existing ``staticDir`` keeps working.
"""

from __future__ import annotations

import http
import sys
from pathlib import Path

from cjs_proxy.config import PACKAGE_ROOT

#: Where the bundled pages live: the checkout's ``errors/``, or the installed copy.
BUNDLED_DIRS = (PACKAGE_ROOT / "errors", Path(sys.prefix) / "share" / "cjs-proxy" / "errors")

NO_CACHE = [("Cache-Control", "no-cache, no-store"), ("Pragma", "no-cache"), ("Expires", "-1")]


def reason_phrase(status: int) -> str:
    if status == 499:
        return "Client Closed Request"
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def bundled_dir() -> Path | None:
    return next((d for d in BUNDLED_DIRS if d.is_dir()), None)


class ErrorPages:
    """The HTML error pages of one folder, by status."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder else bundled_dir()
        self.pages: dict[str, bytes] = {}
        if self.folder and self.folder.is_dir():
            # Hipache's names first, so ``<status>.html`` wins when both exist.
            for path in sorted(self.folder.glob("*.html"), key=lambda p: not p.name.startswith("error_")):
                self.pages[path.stem.removeprefix("error_")] = path.read_bytes()

    def render(self, status: int, detail: str) -> tuple[str, bytes]:
        """(content type, body) for an error answer."""
        page = self.pages.get(str(status)) or self.pages.get("default")
        if page is not None:
            return "text/html; charset=utf-8", page
        return "text/plain; charset=utf-8", f"{status} {reason_phrase(status)}: {detail}\n".encode()

    def response(self, status: int, detail: str) -> tuple[str, list[tuple[str, str]], bytes]:
        """Status line, headers and body of an error answer."""
        content_type, body = self.render(status, detail)
        headers = [("Content-Type", content_type), ("Content-Length", str(len(body))), *NO_CACHE]
        return f"{status} {reason_phrase(status)}", headers, body
