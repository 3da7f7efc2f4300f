"""Error pages: <status>.html, then default.html, then plain text; Hipache's names too."""

from __future__ import annotations

from pathlib import Path

import pytest

from cjs_proxy.exceptions import (
    BackendBusy,
    BackendTimeout,
    BackendUnavailable,
    ClientClosedRequest,
    InvalidHost,
    NoLiveBackend,
    PayloadTooLarge,
    ProxyError,
    StoreUnavailable,
    UnknownHost,
)
from cjs_proxy.pipeline import error_pages
from cjs_proxy.pipeline.error_pages import ErrorPages, bundled_dir, reason_phrase


def pages_in(folder: Path, **files: str) -> ErrorPages:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_html", ".html")).write_text(text, encoding="utf-8")
    return ErrorPages(folder)


def test_status_page_is_preferred(tmp_path: Path) -> None:
    pages = pages_in(tmp_path, **{"502_html": "<p>bad gateway</p>", "default_html": "<p>default</p>"})
    assert pages.render(502, "boom") == ("text/html; charset=utf-8", b"<p>bad gateway</p>")


def test_default_page_when_no_status_page(tmp_path: Path) -> None:
    pages = pages_in(tmp_path, **{"502_html": "<p>bad gateway</p>", "default_html": "<p>default</p>"})
    assert pages.render(503, "boom") == ("text/html; charset=utf-8", b"<p>default</p>")


def test_plain_text_when_no_page(tmp_path: Path) -> None:
    pages = pages_in(tmp_path, **{"502_html": "<p>bad gateway</p>"})
    content_type, body = pages.render(504, "backend 10.0.0.1:80 timed out")
    assert content_type == "text/plain; charset=utf-8"
    assert body == b"504 Gateway Timeout: backend 10.0.0.1:80 timed out\n"


def test_missing_folder_gives_plain_text(tmp_path: Path) -> None:
    pages = ErrorPages(tmp_path / "does-not-exist")
    content_type, body = pages.render(400, "no application configured")
    assert content_type.startswith("text/plain")
    assert b"400 Bad Request: no application configured" in body


def test_hipache_names_are_accepted(tmp_path: Path) -> None:
    pages = pages_in(tmp_path, **{"error_502_html": "hipache 502", "error_default_html": "hipache default"})
    assert pages.render(502, "x")[1] == b"hipache 502"
    assert pages.render(400, "x")[1] == b"hipache default"


def test_own_names_win_over_hipache_names(tmp_path: Path) -> None:
    pages = pages_in(tmp_path, **{"error_502_html": "old", "502_html": "new",
                                  "default_html": "new default", "error_default_html": "old default"})
    assert pages.render(502, "x")[1] == b"new"
    assert pages.render(503, "x")[1] == b"new default"


def test_non_html_files_are_ignored(tmp_path: Path) -> None:
    pages = pages_in(tmp_path, **{"502.txt": "text"})
    assert pages.render(502, "x")[0].startswith("text/plain")


def test_pages_are_read_once(tmp_path: Path) -> None:
    pages = pages_in(tmp_path, **{"502_html": "first"})
    (tmp_path / "502.html").write_text("second", encoding="utf-8")
    assert pages.render(502, "x")[1] == b"first"


def test_none_folder_uses_the_bundled_pages() -> None:
    pages = ErrorPages(None)
    assert pages.folder == bundled_dir()
    assert pages.render(502, "x")[0] == "text/html; charset=utf-8"


@pytest.mark.parametrize("name", ["400", "404", "429", "502", "503", "504", "default"])
def test_bundled_folder_has_the_pages(name: str) -> None:
    folder = bundled_dir()
    assert folder is not None
    page = folder / f"{name}.html"
    assert page.is_file()
    text = page.read_text(encoding="utf-8")
    assert "<html" in text.lower()
    assert name in ErrorPages(folder).pages


@pytest.mark.parametrize("error", [
    InvalidHost(), UnknownHost(), PayloadTooLarge(), NoLiveBackend(), BackendUnavailable(),
    BackendTimeout(), BackendBusy(), StoreUnavailable(),
])
def test_every_answered_status_gets_an_html_page(error: ProxyError) -> None:
    content_type, body = ErrorPages(None).render(error.status, error.detail)
    assert content_type == "text/html; charset=utf-8"
    assert body


def test_response_headers(tmp_path: Path) -> None:
    pages = pages_in(tmp_path, **{"503_html": "<p>unavailable</p>"})
    status, headers, body = pages.response(503, "redis down")
    assert status == "503 Service Unavailable"
    assert body == b"<p>unavailable</p>"
    as_dict = dict(headers)
    assert len(as_dict) == len(headers)
    assert as_dict["Content-Type"] == "text/html; charset=utf-8"
    assert as_dict["Content-Length"] == str(len(body))
    assert "no-cache" in as_dict["Cache-Control"]
    assert "no-store" in as_dict["Cache-Control"]
    assert as_dict["Pragma"] == "no-cache"
    assert as_dict["Expires"] == "-1"


def test_plain_text_response_length_counts_bytes(tmp_path: Path) -> None:
    status, headers, body = ErrorPages(tmp_path).response(502, "caf\u00e9 \u2603")
    assert status == "502 Bad Gateway"
    assert dict(headers)["Content-Length"] == str(len(body))
    assert len(body) > len(body.decode())


def test_response_headers_are_a_fresh_list(tmp_path: Path) -> None:
    pages = ErrorPages(tmp_path)
    _, first, _ = pages.response(502, "x")
    first.append(("x-debug-error", "x"))
    _, second, _ = pages.response(502, "x")
    assert ("x-debug-error", "x") not in second
    assert ("x-debug-error", "x") not in error_pages.NO_CACHE


@pytest.mark.parametrize(("status", "phrase"), [
    (499, "Client Closed Request"),
    (400, "Bad Request"),
    (413, "Request Entity Too Large"),
    (502, "Bad Gateway"),
    (503, "Service Unavailable"),
    (504, "Gateway Timeout"),
    (599, "Error"),
])
def test_reason_phrase(status: int, phrase: str) -> None:
    assert reason_phrase(status) == phrase


def test_client_closed_request_response() -> None:
    error = ClientClosedRequest()
    status, _, _ = ErrorPages(None).response(error.status, error.detail)
    assert status == "499 Client Closed Request"
