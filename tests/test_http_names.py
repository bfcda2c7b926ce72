"""Server span names for requests no route matched (404) or a route refused (405), on real servers.

OpenTelemetry's HTTP conventions: `{method} {http.route}` when there is a route, else `{method}`,
and never the URL path (one span name per path probed is what the conventions forbid); `HTTP` for a
method outside the known ones.
"""

from __future__ import annotations

import http.client
import subprocess
from pathlib import Path

import pytest

from conftest import LAUNCHER, OtlpReceiver, agent_env, free_port, render_tree, wait_for_port

pytestmark = pytest.mark.slow

FLASK = """
import sys, logging
import flask
from werkzeug.serving import make_server

app = flask.Flask(__name__)

@app.get("/items/<int:item>")
def item(item):
    return "item"

logging.getLogger("werkzeug").setLevel(logging.ERROR)
make_server("127.0.0.1", int(sys.argv[1]), app).serve_forever()
"""

DJANGO = """
import sys, logging
import django
from django.conf import settings

settings.configure(ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="x", MIDDLEWARE=[], DEBUG=False)
django.setup()
from django.core.wsgi import get_wsgi_application
from django.http import HttpResponse
from django.urls import path
from django.views.decorators.http import require_GET
from werkzeug.serving import make_server

@require_GET
def item(request, item):
    return HttpResponse("item")

urlpatterns = [path("items/<int:item>", item)]
logging.getLogger("werkzeug").setLevel(logging.ERROR)
logging.getLogger("django").setLevel(logging.CRITICAL)
make_server("127.0.0.1", int(sys.argv[1]), get_wsgi_application()).serve_forever()
"""

FASTAPI = """
import sys
import fastapi, uvicorn

app = fastapi.FastAPI()

@app.get("/items/{item}")
def item(item: int):
    return "item"

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
"""

# (framework, app, the span names of: 404, 405, unknown method on no route, 200)
CASES = [
    ("flask", FLASK, ["GET", "POST", "HTTP", "GET /items/<int:item>"]),
    ("django", DJANGO, ["GET", "POST items/<int:item>", "HTTP", "GET items/<int:item>"]),
    ("fastapi", FASTAPI, ["GET", "POST /items/{item}", "HTTP", "GET /items/{item}"]),
]
REQUESTS = [
    ("GET", "/wp-login.php", 404),
    ("POST", "/items/1", 405),
    ("BREW", "/pot", None),
    ("GET", "/items/1", 200),
]


def _request(port: int, method: str, path: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


@pytest.mark.parametrize(("framework", "app", "names"), CASES, ids=[case[0] for case in CASES])
def test_unmatched_requests_are_named_by_method(
    framework: str, app: str, names: list[str], receiver: OtlpReceiver, tmp_path: Path
) -> None:
    (tmp_path / "app.py").write_text(app)
    port = free_port()
    with open(tmp_path / "stderr", "w") as stderr:
        server = subprocess.Popen(
            [LAUNCHER, "python", "app.py", str(port)], cwd=tmp_path, env=agent_env(receiver), stderr=stderr
        )
    try:
        wait_for_port(port, process=server)
        for method, path, status in REQUESTS:
            answered = _request(port, method, path)
            assert status is None or answered == status, (method, path, answered)
        spans = receiver.wait_for(lambda spans: sum(span.kind == "SERVER" for span in spans) >= len(REQUESTS))
    finally:
        server.terminate()
        server.wait(timeout=30)
    servers = sorted((span for span in spans if span.kind == "SERVER"), key=lambda span: span.start)
    assert [span.name for span in servers] == names, render_tree(spans)
    assert "http.route" not in servers[0].attributes
