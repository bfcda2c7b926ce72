"""An instrumentation's own failure never changes a response, and non-ASCII paths are traced right.

OpenTelemetry's server instrumentations collect a request's attributes before the app runs; when that
raised, their exception was the response (a 500, or an exception out of a test client). Under the
agent the request runs untraced instead (`instrumentors/_http_server.py`), and a non-ASCII path is
recorded as the semantic conventions ask: the request line's percent-encoded form in `http.target`
and `http.url`, the decoded path in `url.path`. Django's own case is in test_django.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conftest import OtlpReceiver, agent_env, child_env, run_launcher, run_process

# A port that is not a number reaches OpenTelemetry's int(SERVER_PORT): any environ a test client or
# a gateway builds is the app's to judge, not the instrumentation's.
FLASK_APP = """
import flask

app = flask.Flask(__name__)


@app.get("/<name>")
def hello(name):
    return "hello " + name


client = app.test_client()
for path, overrides in (("/world", {}), ("/world", {"SERVER_PORT": "not-a-port"}), ("/%E2%99%A5", {})):
    response = client.get(path, environ_overrides=overrides)
    print(path, overrides, response.status_code, ascii(response.get_data(as_text=True)))
"""


@pytest.mark.slow
def test_flask_request_whose_attributes_fail_is_answered_untraced(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    app = tmp_path / "app.py"
    app.write_text(FLASK_APP)
    plain = run_process([sys.executable, str(app)], child_env())
    assert plain.stdout.splitlines()[1] == "/world {'SERVER_PORT': 'not-a-port'} 200 'hello world'"
    env = agent_env(receiver, OTEL_SEMCONV_STABILITY_OPT_IN="http/dup")
    traced = run_launcher(["python", str(app)], env)
    assert (traced.returncode, traced.stdout) == (0, plain.stdout)
    spans = receiver.wait_for(lambda spans: sum(span.kind == "SERVER" for span in spans) >= 2, timeout=10)
    servers = [span for span in spans if span.kind == "SERVER"]
    # Two of the three requests traced: the one with the bad port is not.
    assert sorted(span.attributes["http.target"] for span in servers) == ["/%E2%99%A5", "/world"]
    assert sorted(span.attributes["url.path"] for span in servers) == ["/world", "/\u2665"]
