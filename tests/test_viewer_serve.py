"""`logfire-run-view --serve` in a real browser: Playwright driving Debian's chromium (never a download).

The stores are written by real apps started through the launcher; the server is the real console script
on 127.0.0.1; what is checked is what a person sees on the page.
"""

from __future__ import annotations

import datetime
import http.client
import json
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from conftest import VIEWER, agent_env, child_env, run_launcher, run_process

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
#: How long a page may take to show what the server has (generous: the machine is shared).
WAIT_MS = 20_000

pytestmark = pytest.mark.slow

SHOP = """
import datetime, json, logging, os, subprocess, sys, time
import logfire_run
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from logfire_run.propagate import get_context

log = logging.getLogger("shop")
tracer = trace.get_tracer("shop")
with logfire_run.span("early trace"):
    pass
logfire_run.force_flush()
time.sleep(1.2)
boundary = time.time()
time.sleep(0.2)
with tracer.start_as_current_span("GET /items/{item_id}", kind=SpanKind.SERVER, attributes={
        "http.request.method": "GET", "http.route": "/items/{item_id}", "url.path": "/items/7",
        "http.response.status_code": 200}) as server:
    with tracer.start_as_current_span("SELECT items", kind=SpanKind.CLIENT,
            attributes={"db.system": "sqlite", "db.statement": "SELECT * FROM items WHERE id = ?"}):
        log.warning("stock is low for item %s", 7)
    with logfire_run.span("pricing", coupon="needle-coupon-42"):
        pass
    first = server.get_span_context()
with logfire_run.span("call billing"):
    env = dict(os.environ, CARRIER=json.dumps(get_context()), LOGFIRE_SERVICE_NAME="billing")
    subprocess.run([sys.executable, "-c", '''
import json, os, logfire_run
from logfire_run.propagate import attach_context
with attach_context(json.loads(os.environ["CARRIER"])):
    with logfire_run.span("charge card", amount=12):
        pass
'''], env=env, check=True)
try:
    with logfire_run.span("failing job"):
        raise ValueError("the job failed: disk full")
except ValueError:
    pass
with logfire_run.span("slow report"):
    time.sleep(3)
with tracer.start_as_current_span("follow-up", links=[Link(first)]):
    pass
print(json.dumps({"boundary": boundary, "linked": f"{first.trace_id:032x}"}))
"""

ROOTS = {"early trace", "GET /items/{item_id}", "call billing", "failing job", "slow report", "follow-up"}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("shop")
    (folder / "shop.py").write_text(SHOP)
    store = folder / "traces.db"
    env = agent_env(None, LOGFIRE_STORE=str(store))
    result = run_launcher(
        ["--service-name", "shop", "python", str(folder / "shop.py")],
        env,
        expect_stderr=lambda stderr: stderr == "stock is low for item 7\n",  # logging's last resort
    )
    assert result.returncode == 0, result.stderr
    facts: dict[str, Any] = json.loads(result.stdout)
    facts["store"] = store
    facts["ids"] = {
        trace["root"]: trace["trace_id"]
        for trace in json.loads(run_process([VIEWER, "--store", str(store), "--json"], child_env()).stdout)
    }
    assert set(facts["ids"]) == ROOTS
    return facts


@contextmanager
def served(store: Path, *extra: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """The real `logfire-run-view --serve` on a free port: its URL (the first line it prints)."""
    process = subprocess.Popen(
        [VIEWER, "--serve", "--port", "0", "--store", str(store), *extra],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = process.stdout.readline().strip() if process.stdout else ""
        assert url, process.stderr.read() if process.stderr else ""
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        if process.stdout:
            process.stdout.close()
        if process.stderr:
            process.stderr.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as driver:
        # A name that resolves to 127.0.0.1, as a DNS-rebinding page's would (the Host-header test).
        launched = driver.chromium.launch(
            executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, "--host-resolver-rules=MAP rebind.test 127.0.0.1"]
        )
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 800})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, errors


def load(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("body[data-loaded]", timeout=WAIT_MS)


def listed(page: Any) -> list[str]:
    return [str(name) for name in page.locator("#traces tr.trace .root-name").all_inner_texts()]


# The server as a process


def test_serve_prints_its_url_first_and_sigterm_ends_it(shop: dict[str, Any]) -> None:
    help_text = run_process([VIEWER, "--help"], child_env()).stdout
    assert "--serve" in help_text and "--service" in help_text and "--slowest" in help_text
    with served(shop["store"]) as (url, process):
        # Read while the server runs, through a pipe: the line was flushed at once.
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), url
        connection = http.client.HTTPConnection(url.split("//")[1].rstrip("/"), timeout=10)
        connection.request("GET", "/api/traces")
        assert connection.getresponse().status == 200
        connection.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


# The trace list


def test_the_list_shows_each_trace_with_its_details(shop: dict[str, Any], page: Any) -> None:
    with served(shop["store"]) as (url, _process):
        load(page, url)
        assert set(listed(page)) == ROOTS
        rows = {row.locator(".root-name").inner_text(): row for row in page.locator("#traces tr.trace").all()}
        billing = rows["call billing"]
        assert billing.locator(".chip").all_inner_texts() == ["shop", "billing"]
        assert billing.locator(".spans").inner_text() == "2"
        assert re.fullmatch(
            r"\d+(\.\d)? ms|\d+ µs", rows["GET /items/{item_id}"].locator(".duration").inner_text()
        )
        assert re.fullmatch(r"3\.\d\d s", rows["slow report"].locator(".duration").inner_text())
        assert rows["failing job"].locator(".err-mark").inner_text() == "error"
        assert rows["slow report"].locator(".err-mark").count() == 0
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", rows["early trace"].locator(".when").inner_text())
        # Newest first: the early trace is last.
        assert listed(page)[-1] == "early trace"


def _local(moment: float) -> str:
    return datetime.datetime.fromtimestamp(moment).isoformat()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("service=billing", {"call billing"}),
        ("q=needle-coupon", {"GET /items/{item_id}"}),  # an attribute value of a child span
        ("q=CHARGE+card", {"call billing"}),  # a span name in another process, any case
        ("errors=1", {"failing job"}),
        ("min_duration=2.5s", {"slow report"}),
        ("route=/items", {"GET /items/{item_id}"}),
        ("until=BOUNDARY", {"early trace"}),
        ("since=BOUNDARY", ROOTS - {"early trace"}),
        ("service=shop&errors=1", {"failing job"}),
        ("service=nobody", set()),
    ],
)
def test_each_filter_shows_only_the_matching_traces(
    shop: dict[str, Any], page: Any, query: str, expected: set[str]
) -> None:
    query = query.replace("BOUNDARY", _local(shop["boundary"]))
    with served(shop["store"]) as (url, _process):
        load(page, f"{url}?{query}")
        assert set(listed(page)) == expected
        # No other trace anywhere on the page.
        text = page.locator("body").inner_text()
        for other in ROOTS - expected:
            assert other not in text, (other, query)


def test_filters_are_kept_in_the_url(shop: dict[str, Any], page: Any) -> None:
    with served(shop["store"]) as (url, _process):
        load(page, url)
        page.fill("input[name=service]", "billing")
        page.check("input[name=errors]")
        page.uncheck("input[name=errors]")
        page.click("button:has-text('Apply')")
        page.wait_for_url(re.compile(r"\?service=billing$"), timeout=WAIT_MS)
        page.wait_for_selector("body[data-loaded]", timeout=WAIT_MS)
        assert listed(page) == ["call billing"]
        page.reload()
        page.wait_for_selector("body[data-loaded]", timeout=WAIT_MS)
        assert listed(page) == ["call billing"] and page.input_value("input[name=service]") == "billing"


LATE = """
import logfire_run
with logfire_run.span("late arrival"):
    pass
"""


def test_a_new_trace_appears_without_a_reload(tmp_path: Path, page: Any) -> None:
    store = tmp_path / "traces.db"
    (tmp_path / "late.py").write_text(LATE)
    with served(store) as (url, _process):
        load(page, url)  # no store yet: an empty list
        assert listed(page) == []
        env = agent_env(None, LOGFIRE_STORE=str(store))
        assert run_launcher(["python", str(tmp_path / "late.py")], env).returncode == 0
        page.wait_for_selector("#traces .root-name:has-text('late arrival')", timeout=WAIT_MS)
        assert run_launcher(["python", str(tmp_path / "late.py")], env).returncode == 0
        expect(page.locator("#traces tr.trace")).to_have_count(2, timeout=WAIT_MS)


HANGING = """
import os, sys, time
import logfire_run
release = sys.argv[1]
with logfire_run.span("hanging request", **{"http.route": "/slow"}):
    with logfire_run.span("slow call"):
        while not os.path.exists(release):
            time.sleep(0.05)
"""


def test_a_running_span_shows_while_it_runs_then_completes(tmp_path: Path, page: Any) -> None:
    """Default settings (no fast batching): the span shows as running, then as a span."""
    store = tmp_path / "traces.db"
    release = tmp_path / "release"
    (tmp_path / "hanging.py").write_text(HANGING)
    env = child_env(LOGFIRE_STORE=str(store))
    app = subprocess.Popen(
        [str(Path(VIEWER).with_name("logfire-run")), "python", str(tmp_path / "hanging.py"), str(release)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with served(store) as (url, _process):
            load(page, url)
            page.wait_for_selector("#traces tr.trace .run-mark", timeout=WAIT_MS)
            assert listed(page) == ["hanging request"]
            page.click("#traces .root-name")
            page.wait_for_selector(".row[data-state=running]", timeout=WAIT_MS)
            names = page.locator(".row[data-state=running] .name").all_inner_texts()
            assert names == ["hanging request", "slow call"]
            elapsed = page.locator(".row[data-state=running] .dur").first.inner_text()
            assert re.fullmatch(r"running \d+(\.\d+)? (s|ms)", elapsed), elapsed
            release.touch()
            assert app.wait(timeout=60) == 0
            expect(page.locator(".row[data-state=ended]")).to_have_count(2, timeout=WAIT_MS)
            assert page.locator(".run-mark").count() == 0
            durations = page.locator(".row .dur").all_inner_texts()
            assert all(re.fullmatch(r"\d+\.\d\d s", text) for text in durations), durations
    finally:
        release.touch()
        if app.poll() is None:
            app.kill()
        _stdout, stderr = app.communicate(timeout=30)
        assert stderr == ""


# The trace page


def test_the_trace_page_rows_axis_and_side_panel(shop: dict[str, Any], page: Any) -> None:
    trace_id = shop["ids"]["GET /items/{item_id}"]
    with served(shop["store"]) as (url, _process):
        load(page, f"{url}trace/{trace_id}")
        rows = page.locator(".row[data-span-id]")
        assert rows.locator(".name").all_inner_texts() == ["GET /items/{item_id}", "SELECT items", "pricing"]
        # Seen without a click: the route and status, the statement, the log message.
        first, statement = rows.nth(0).inner_text(), rows.nth(1).inner_text()
        assert "GET /items/7" in first and "status=200" in first and "GET /items/{item_id}" in first
        assert "SELECT * FROM items WHERE id = ?" in statement
        assert "WARNING" in statement and "stock is low for item 7" in statement
        assert page.locator(".axis .tick").count() >= 3
        assert re.fullmatch(r"\d+(\.\d)? ms|\d+ µs", rows.nth(2).locator(".dur").inner_text())
        rows.nth(2).click()
        panel = page.locator("#panel")
        assert panel.is_visible()
        assert "coupon" in panel.inner_text() and "needle-coupon-42" in panel.inner_text()
        assert page.url.endswith("?span=" + rows.nth(2).get_attribute("data-span-id"))

        failing = shop["ids"]["failing job"]
        load(page, f"{url}trace/{failing}")
        page.locator(".row[data-span-id]").first.click()
        exception = page.locator("#panel .exception").inner_text()
        assert "ValueError: the job failed: disk full" in exception and "Traceback" in exception

        follow = shop["ids"]["follow-up"]
        load(page, f"{url}trace/{follow}")
        page.locator(".row[data-span-id]").first.click()
        page.click("#panel a.linked-trace")
        page.wait_for_url(re.compile(f"/trace/{shop['linked']}"), timeout=WAIT_MS)
        page.wait_for_selector(".row[data-span-id]", timeout=WAIT_MS)
        assert page.locator(".row .name").first.inner_text() == "GET /items/{item_id}"


def test_the_logs_page_lists_records_with_filters_and_trace_links(shop: dict[str, Any], page: Any) -> None:
    with served(shop["store"]) as (url, _process):
        load(page, f"{url}logs")
        assert page.locator("#logs tr.log .message").all_inner_texts() == ["stock is low for item 7"]
        load(page, f"{url}logs?level=error")
        assert page.locator("#logs tr.log").count() == 0
        load(page, f"{url}logs?q=STOCK&service=shop")
        page.click("#logs a.trace-link")
        page.wait_for_selector(".row[data-span-id]", timeout=WAIT_MS)
        assert shop["ids"]["GET /items/{item_id}"] in page.url


# The endpoints, from the HTTP server duration metrics the app's processes stored

ORDERS = """
from flask import Flask

app = Flask(__name__)


@app.route("/order/<int:number>")
def order(number):
    if number % 5 == 4:
        return "out of stock", 503
    return "ok"


@app.route("/health")
def health():
    return "up"


client = app.test_client()
for number in range(10):
    client.get(f"/order/{number}")
for _ in range(3):
    client.get("/health")
print("served")
"""


def test_the_endpoints_page_shows_requests_errors_and_latency_per_route(tmp_path: Path, page: Any) -> None:
    store = tmp_path / "traces.db"
    (tmp_path / "orders.py").write_text(ORDERS)
    result = run_launcher(["python", "orders.py"], agent_env(None, LOGFIRE_STORE=str(store)), cwd=tmp_path)
    assert result.stdout == "served\n"
    with served(store) as (url, _process):
        load(page, f"{url}endpoints")
        rows = {
            row.locator(".route").inner_text(): row for row in page.locator("#endpoints tr.endpoint").all()
        }
        assert set(rows) == {"GET /order/<int:number>", "GET /health"}

        def counts(row: Any) -> list[str]:
            return [row.locator(cell).inner_text() for cell in (".count", ".errors", ".rate")]

        order = rows["GET /order/<int:number>"]
        assert counts(order) == ["10", "2", "20%"]
        assert order.locator(".svc").inner_text() == "orders"
        for cell in (".p50", ".p95", ".p99"):
            assert re.fullmatch(r"\d+ µs|\d+\.\d ms|\d+\.\d\d s", order.locator(cell).inner_text())
        health = rows["GET /health"]
        assert counts(health) == ["3", "0", "0%"]
        # Filters in the URL: another service, a window and a service, a bad window.
        load(page, f"{url}endpoints?service=billing")
        assert page.locator("#endpoints tr.endpoint").count() == 0
        assert "No HTTP server requests" in page.locator(".note").inner_text()
        load(page, f"{url}endpoints?since=1d&service=orders")
        assert page.locator("#endpoints tr.endpoint").count() == 2
        page.goto(f"{url}endpoints?since=soon")
        expect(page.locator(".error-box")).to_contain_text("invalid time window", timeout=WAIT_MS)
        # A route opens the trace list filtered to that route: ten requests, nothing else.
        load(page, f"{url}endpoints")
        page.click("#endpoints a.route-link >> text=GET /order/<int:number>")
        page.wait_for_url(re.compile(r"route="), timeout=WAIT_MS)
        page.wait_for_selector("#traces tr.trace", timeout=WAIT_MS)
        assert sorted(set(listed(page))) == ["GET /order/<int:number>"]
        assert len(listed(page)) == 10


# Hostile data


HOSTILE = """
import logging, logfire_run
names = [
    "<img src=x onerror=\\"document.body.setAttribute('data-pwned','1')\\">",
    "</script><script>document.body.setAttribute('data-pwned','2')</script>",
    "bidi \\u202eevil\\u202c esc \\x1b[2J zero\\u200bwidth",
]
with logfire_run.span(names[0], payload=names[1]):
    for name in names:
        with logfire_run.span(name, **{"http.route": names[1], "db.statement": names[0]}):
            logging.getLogger(names[1]).error(names[0])
"""


def test_hostile_data_is_shown_as_inert_text(tmp_path: Path, page: Any) -> None:
    store = tmp_path / "traces.db"
    (tmp_path / "hostile.py").write_text(HOSTILE)
    result = run_launcher(
        ["--service-name", "<b>svc</b>", "python", str(tmp_path / "hostile.py")],
        agent_env(None, LOGFIRE_STORE=str(store)),
        expect_stderr=None,  # logging's last-resort handler prints the records
    )
    assert result.returncode == 0
    with served(store) as (url, _process):
        for path in ("", "logs"):
            load(page, url + path)
            assert page.locator("body").get_attribute("data-pwned") is None
            assert page.locator("main img, main b, main script").count() == 0
        load(page, url)
        assert listed(page) == ["<img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">"]
        page.click("#traces .root-name")
        page.wait_for_selector(".row[data-span-id]", timeout=WAIT_MS)
        names = page.locator(".row .name").all_inner_texts()
        assert names[3] == "bidi \\u202eevil\\u202c esc \\x1b[2J zero\\u200bwidth"
        page.locator(".row[data-span-id]").nth(1).click()
        assert "</script><script>" in page.locator("#panel").inner_text()
        assert page.locator("body").get_attribute("data-pwned") is None
        assert page.locator("main img, main b, main script, #panel img, #panel script").count() == 0
        assert page.locator(".chip").first.inner_text() == "<b>svc</b>"


# The Host-header guard (DNS rebinding)


def test_a_request_naming_another_host_gets_nothing(shop: dict[str, Any], browser: Any) -> None:
    trace_id = shop["ids"]["call billing"]
    paths = ["/", "/logs", "/endpoints", f"/trace/{trace_id}", "/api/traces", f"/api/trace/{trace_id}"]
    paths += ["/api/logs", "/api/endpoints", "/api/events", "/static/app.js", "/static/app.css", "/nothing"]
    with served(shop["store"]) as (url, _process):
        address = url.split("//")[1].rstrip("/")
        port = address.split(":")[1]
        for path in paths:
            for host in (f"attacker.example:{port}", "127.0.0.1", f"localhost.attacker.example:{port}", ""):
                connection = http.client.HTTPConnection(address, timeout=10)
                connection.putrequest("GET", path, skip_host=True)
                if host:
                    connection.putheader("Host", host)
                connection.endheaders()
                response = connection.getresponse()
                body = response.read().decode()
                connection.close()
                assert response.status == 421, (path, host)
                assert trace_id not in body and "billing" not in body and "function" not in body
        # The same in a browser, as a rebinding page sees it: a name that resolves to 127.0.0.1.
        tab = browser.new_page()
        response = tab.goto(f"http://rebind.test:{port}/")
        assert response is not None and response.status == 421
        assert "call billing" not in tab.content()
        tab.close()
        # And the served address itself is answered.
        tab = browser.new_page()
        tab.goto(url.replace("127.0.0.1", "localhost"))
        tab.wait_for_selector("body[data-loaded]", timeout=WAIT_MS)
        assert "call billing" in tab.locator("#traces").inner_text()
        tab.close()


def test_another_address_needs_the_printed_token(shop: dict[str, Any]) -> None:
    with served(shop["store"], "--host", "0.0.0.0") as (url, _process):
        match = re.fullmatch(r"http://0\.0\.0\.0:(\d+)/\?token=([\w-]{20,})", url)
        assert match, url
        port, token = match.groups()

        def get(path: str, cookie: str = "") -> http.client.HTTPResponse:
            connection = http.client.HTTPConnection("127.0.0.1", int(port), timeout=10)
            connection.request("GET", path, headers={"Cookie": cookie} if cookie else {})
            response = connection.getresponse()
            response.read()
            connection.close()
            return response

        assert get("/api/traces").status == 403
        assert get("/api/traces?token=wrong").status == 403
        assert get(f"/api/traces?token={token}").status == 200
        page = get(f"/?token={token}")
        cookie = (page.getheader("Set-Cookie") or "").split(";")[0]
        assert page.status == 200 and cookie.endswith(token)
        assert get("/api/traces", cookie).status == 200


# The same filters in the terminal


def test_the_terminal_list_takes_the_same_filters(shop: dict[str, Any]) -> None:
    def roots(*args: str) -> list[str]:
        output = run_process([VIEWER, "--store", str(shop["store"]), "--json", *args], child_env()).stdout
        return [trace["root"] for trace in json.loads(output)]

    assert roots("--service", "billing") == ["call billing"]
    assert roots("--errors", "--since", "10m") == ["failing job"]
    assert roots("-q", "needle-coupon") == ["GET /items/{item_id}"]
    assert roots("--route", "/items") == ["GET /items/{item_id}"]
    assert roots("--slowest", "--limit", "2")[0] == "slow report"
    assert roots("--until", _local(shop["boundary"])) == ["early trace"]
    plain = run_process([VIEWER, "--store", str(shop["store"]), "--errors"], child_env()).stdout
    assert "failing job" in plain and "(1 error)" in plain and "slow report" not in plain
    bad = run_process(
        [VIEWER, "--store", str(shop["store"]), "--min-duration", "fast"],
        child_env(),
        expect_stderr=lambda stderr: "is not a duration" in stderr,
    )
    assert bad.returncode == 1
