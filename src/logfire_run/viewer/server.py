"""`logfire-run-view --serve`: the live UI, served from the store by the standard library's HTTP server.

Pages (`/`, `/trace/<id>`, `/logs`, `/endpoints`) are one static shell and one script shipped in the package
(`viewer/static/`: no CDN, works offline); the script reads JSON (`/api/...`) and puts every string
in the page as text. `/api/events` is an event stream that says when the store changed (another
process committed: SQLite's `data_version`), and the page reads the list or the trace again.

Safety:
- it listens on 127.0.0.1 unless told otherwise; any other address needs the token printed with the
  URL (a query parameter once, then a cookie for that address);
- every request, whatever its path, is refused (421, no data) unless its `Host` header names the
  served address (`127.0.0.1:PORT`, `localhost:PORT`): a DNS-rebinding page gets nothing;
- the pages' content security policy allows nothing but this server's own script, styles and data.

It never runs in the app's process, reads the store only (`open_store(create=False)`), and ends on
SIGINT or SIGTERM within a second.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import os
import re
import secrets
import signal
import sqlite3
import sys
import threading
import time
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from logfire_run.store_format import NotAStoreError, open_store
from logfire_run.viewer import model, query, signals

DEFAULT_PORT = 7175
#: The Endpoints page's window when its URL names none (what `--metrics` uses too).
ENDPOINTS_WINDOW = "1h"
#: How often an event stream looks for a change in the store.
POLL_SECONDS = 0.5
_TRACE_PATH = re.compile(r"^/(?:api/)?trace/([0-9a-f]{32})$")
_STATIC = {
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/app.css": ("app.css", "text/css; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
_PAGES = ("/", "/logs", "/endpoints")
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_COOKIE = "logfire_run_view"


class Store:
    """Connections to the store, one per request thread at a time, reopened when the file changes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._idle: list[tuple[sqlite3.Connection, int]] = []

    def _inode(self) -> int:
        try:
            return os.stat(self.path).st_ino
        except OSError:
            return -1

    @contextlib.contextmanager
    def connection(self) -> Any:
        """A prepared connection, or None while there is no store at the path yet."""
        inode = self._inode()
        entry = None
        with self._lock:
            while self._idle:
                candidate = self._idle.pop()
                if candidate[1] == inode:
                    entry = candidate
                    break
                candidate[0].close()  # the file was replaced (deleted and made again)
        if entry is None:
            if inode < 0:
                yield None
                return
            try:
                connection = open_store(self.path, create=False)
            except FileNotFoundError:
                yield None
                return
            try:
                query.prepare(connection)
            except BaseException:
                connection.close()
                raise
            entry = (connection, inode)
        try:
            yield entry[0]
        except BaseException:
            entry[0].close()
            raise
        with self._lock:
            self._idle.append(entry)

    def close(self) -> None:
        with self._lock:
            for connection, _inode in self._idle:
                connection.close()
            self._idle.clear()


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], store: Store, token: str | None) -> None:
        super().__init__(address, Handler)
        self.store = store
        self.token = token
        self.stopping = threading.Event()
        host, port = self.server_address[:2]
        self.port = int(port)
        self.allowed_hosts = _allowed_hosts(str(host), self.port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _allowed_hosts(host: str, port: int) -> frozenset[str] | None:
    """The `Host` headers accepted; None (any, the token decides) when listening on every address."""
    if _is_loopback(host):
        return frozenset({f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"})
    if host in ("", "0.0.0.0", "::"):
        return None
    shown = f"[{host}]" if ":" in host else host
    return frozenset({f"{shown.lower()}:{port}"})


class Handler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "logfire-run-view"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the URL line is the one thing printed; requests are not logged

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        try:
            self._get()
        except (BrokenPipeError, ConnectionResetError):
            pass
        except NotAStoreError as error:
            self._json({"error": str(error)}, HTTPStatus.CONFLICT)
        except query.FilterError as error:
            self._json({"error": str(error)}, HTTPStatus.BAD_REQUEST)
        except sqlite3.Error as error:
            self._json({"error": f"cannot read the trace store: {error}"}, HTTPStatus.SERVICE_UNAVAILABLE)

    def _refuse(self, status: HTTPStatus, reason: str) -> None:
        body = f"{status.value} {reason}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _guard(self, params: dict[str, str]) -> bool:
        """Whether this request may have anything: its Host header, then the token if one is needed."""
        host = (self.headers.get("Host") or "").strip().lower()
        allowed = self.server.allowed_hosts
        if allowed is not None and host not in allowed:
            self._refuse(HTTPStatus.MISDIRECTED_REQUEST, "this server answers to its own address only")
            return False
        token = self.server.token
        if token is None:
            return True
        given = params.get("token", "")
        if not given:
            cookie = SimpleCookie(self.headers.get("Cookie") or "")
            given = cookie[_COOKIE].value if _COOKIE in cookie else ""
        if not hmac.compare_digest(given.encode(), token.encode()):
            self._refuse(HTTPStatus.FORBIDDEN, "open the URL with the token that logfire-run-view printed")
            return False
        return True

    def _get(self) -> None:
        url = urlsplit(self.path)
        params = {key: values[-1] for key, values in parse_qs(url.query).items()}
        if not self._guard(params):
            return
        path = url.path
        if path in _PAGES or (_TRACE_PATH.match(path) and not path.startswith("/api/")):
            self._static("app.html", "text/html; charset=utf-8", set_token="token" in params)
        elif path in _STATIC:
            self._static(*_STATIC[path])
        elif path == "/api/traces":
            self._traces(params)
        elif path.startswith("/api/trace/"):
            match = _TRACE_PATH.match(path)
            if match is None:
                self._json({"error": "not a trace id"}, HTTPStatus.NOT_FOUND)
            else:
                self._trace(match.group(1))
        elif path == "/api/logs":
            self._logs(params)
        elif path == "/api/endpoints":
            self._endpoints(params)
        elif path == "/api/events":
            self._events()
        else:
            self._refuse(HTTPStatus.NOT_FOUND, "not found")

    # Responses

    def _headers(self, status: HTTPStatus, content_type: str, length: int | None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if length is not None:
            self.send_header("Content-Length", str(length))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", _POLICY)
        self.send_header("X-Frame-Options", "DENY")

    def _static(self, name: str, content_type: str, *, set_token: bool = False) -> None:
        body = (resources.files("logfire_run.viewer") / "static" / name).read_bytes()
        self._headers(HTTPStatus.OK, content_type, len(body))
        if set_token and self.server.token is not None:
            self.send_header(
                "Set-Cookie", f"{_COOKIE}={self.server.token}; HttpOnly; SameSite=Strict; Path=/"
            )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        # ensure_ascii: every character past ASCII (U+2028 included) travels as a \\u escape.
        body = json.dumps(value, ensure_ascii=True, default=str).encode()
        self._headers(status, "application/json", len(body))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _traces(self, params: dict[str, str]) -> None:
        now = time.time_ns()
        filters = query.filters_from(params, now)
        with self.server.store.connection() as connection:
            if connection is None:
                self._json({"traces": [], "services": [], "now_ns": now, "store": self.server.store.path})
                return
            summaries = query.list_traces(connection, filters, now)
            names = query.services(connection)
        self._json(
            {
                "traces": [model.summary_dict(summary) for summary in summaries],
                "services": names,
                "now_ns": now,
                "store": self.server.store.path,
            }
        )

    def _trace(self, trace_id: str) -> None:
        now = time.time_ns()
        with self.server.store.connection() as connection:
            if connection is None:
                self._json({"error": "no trace store yet"}, HTTPStatus.NOT_FOUND)
                return
            rows, logs = query.open_trace(connection, trace_id, now)
        if not rows and not logs:
            self._json({"error": f"no trace {trace_id} in the store"}, HTTPStatus.NOT_FOUND)
            return
        summary = query.summarize_spans(trace_id, [row.span for row in rows])
        by_span, unattached = model.logs_by_span(logs, rows)
        self._json(
            {
                "trace": model.summary_dict(summary),
                "end_ns": summary.end_ns,
                "spans": [model.span_dict(row, by_span.get(row.span.span_id)) for row in rows],
                "unattached_logs": [model.log_dict(log) for log in unattached],
                "now_ns": now,
            }
        )

    def _logs(self, params: dict[str, str]) -> None:
        with self.server.store.connection() as connection:
            if connection is None:
                self._json({"logs": []})
                return
            logs = query.list_logs(
                connection,
                level=params.get("level") or None,
                service=params.get("service") or None,
                q=params.get("q") or None,
                limit=200,
            )
        self._json({"logs": [model.log_dict(log) for log in logs], "now_ns": time.time_ns()})

    def _endpoints(self, params: dict[str, str]) -> None:
        """Requests, errors and duration percentiles per service and route, over `since` (default 1h)."""
        window_text = params.get("since") or ENDPOINTS_WINDOW
        try:
            window = signals.parse_window(window_text)
        except ValueError as error:
            raise query.FilterError(str(error)) from None
        with self.server.store.connection() as connection:
            service = params.get("service") or None
            rows = [] if connection is None else signals.request_metrics(connection, window, service)
        self._json(
            {
                "endpoints": [signals.route_dict(row) for row in rows],
                "since": window_text,
                "now_ns": time.time_ns(),
            }
        )

    def _events(self) -> None:
        """`change` whenever another process commits to the store (and once at the start)."""
        path = self.server.store.path
        connection: sqlite3.Connection | None = None

        def connect() -> sqlite3.Connection | None:
            with contextlib.suppress(FileNotFoundError, sqlite3.Error, NotAStoreError):
                return open_store(path, create=False)
            return None

        # The state the page is about to read: any change after it is announced.
        connection = connect()
        last = _marker(connection, path)
        self._headers(HTTPStatus.OK, "text/event-stream", None)
        self.end_headers()
        self.wfile.write(b"retry: 1000\n\nevent: change\ndata: {}\n\n")
        self.wfile.flush()
        quiet_since = time.monotonic()
        try:
            while not self.server.stopping.wait(POLL_SECONDS):
                if connection is None:
                    connection = connect()
                marker = _marker(connection, path)
                if marker != last:
                    self.wfile.write(b"event: change\ndata: {}\n\n")
                    self.wfile.flush()
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > 10:
                    self.wfile.write(b": still here\n\n")  # finds a closed tab
                    self.wfile.flush()
                    quiet_since = time.monotonic()
                last = marker
        finally:
            if connection is not None:
                connection.close()


def _marker(connection: sqlite3.Connection | None, path: str) -> tuple[int, int]:
    """What changes when the store does: the file (replaced or not) and SQLite's data version."""
    try:
        inode = os.stat(path).st_ino
    except OSError:
        return (-1, 0)
    if connection is None:
        return (inode, -1)
    try:
        return (inode, int(connection.execute("PRAGMA data_version").fetchone()[0]))
    except sqlite3.Error:
        return (inode, -2)


def _bind(host: str, port: int | None, store: Store, token: str | None) -> ViewerServer:
    family_host = host.strip("[]")
    if port is not None:
        return _make(family_host, port, store, token)
    try:
        return _make(family_host, DEFAULT_PORT, store, token)
    except OSError:
        sys.stderr.write(f"logfire-run-view: port {DEFAULT_PORT} is taken; serving on a free port instead\n")
        return _make(family_host, 0, store, token)


def _make(host: str, port: int, store: Store, token: str | None) -> ViewerServer:
    import socket

    class Server(ViewerServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    return Server((host, port), store, token)


def serve(path: str, *, host: str = "127.0.0.1", port: int | None = None) -> int:
    """Serve the live UI until SIGINT or SIGTERM; the URL is the first line on stdout."""
    host = host.strip("[]")
    token = None if _is_loopback(host) else secrets.token_urlsafe(24)
    store = Store(path)
    try:
        server = _bind(host, port, store, token)
    except OSError as error:
        sys.stderr.write(f"logfire-run-view: cannot serve on {host}:{port}: {error.strerror or error}\n")
        return 1
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{server.port}/" + (f"?token={token}" if token else "")
    sys.stdout.write(url + "\n")
    sys.stdout.flush()
    sys.stderr.write(f"logfire-run-view: serving {path}; Ctrl-C stops\n")
    sys.stderr.flush()

    def stop(signum: int, frame: object) -> None:
        server.stopping.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.25)
    except KeyboardInterrupt:
        pass
    finally:
        server.stopping.set()
        server.server_close()
        store.close()
    return 0
