"""`logfire-run-view` as a user meets it: the trace list, the tree, orphans, --json and the HTML page."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import VIEWER, StderrExpectation, agent_env, child_env, run_launcher, run_process

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

FRONT = """
import json, os, subprocess, sys
import logfire_run
from logfire_run.propagate import get_context
with logfire_run.span("checkout", cart_items=3):
    env = dict(os.environ, CARRIER=json.dumps(get_context()), LOGFIRE_SERVICE_NAME="back")
    subprocess.run([sys.executable, sys.argv[1]], env=env, check=True, timeout=60)
"""

BACK = """
import json, os
import logfire_run
from logfire_run.propagate import attach_context
carrier = json.loads(os.environ["CARRIER"])
with attach_context(carrier):
    with logfire_run.span("charge card"):
        pass
# The same trace, under a parent span that was never exported: what broken propagation looks like.
trace_id = carrier["traceparent"].split("-")[1]
with attach_context({"traceparent": f"00-{trace_id}-00000000000000aa-01"}):
    with logfire_run.span("lost parent"):
        pass
"""


@pytest.fixture(scope="module")
def stored_trace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A store holding one trace across two services (front, back) with one orphan span."""
    folder = tmp_path_factory.mktemp("viewer")
    (folder / "front.py").write_text(FRONT)
    (folder / "back.py").write_text(BACK)
    store = folder / "traces.db"
    env = agent_env(None, LOGFIRE_STORE=str(store))
    result = run_launcher(
        ["--service-name", "front", "python", str(folder / "front.py"), str(folder / "back.py")], env
    )
    assert result.returncode == 0, result.stderr
    listing = view(store, "--json")
    assert len(listing) == 1
    return store, listing[0]["trace_id"]


def run_view(
    store: Path, *args: str, expect_stderr: StderrExpectation = ""
) -> subprocess.CompletedProcess[str]:
    return run_process([VIEWER, "--store", str(store), *args], child_env(), expect_stderr=expect_stderr)


def view(store: Path, *args: str) -> object:
    result = run_view(store, *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout) if "--json" in args else result.stdout


def test_list_shows_time_root_services_count_and_duration(stored_trace: tuple[Path, str]) -> None:
    store, trace_id = stored_trace
    output = view(store)
    assert isinstance(output, str)
    header, line = output.splitlines()
    assert header.split()[:4] == ["time", "trace", "id", "spans"]
    assert re.match(
        rf"\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{{3}}  {trace_id}      3 +[\d.]+ (µs|ms|s)  "
        r"checkout  \[front, back\]  \(1 orphan\)$",
        line,
    ), line


def test_tree_indents_children_and_marks_the_orphan(stored_trace: tuple[Path, str]) -> None:
    store, trace_id = stored_trace
    output = view(store, trace_id[:8])
    assert isinstance(output, str)
    lines = output.splitlines()
    assert lines[0].startswith(f"trace {trace_id}  ")
    assert "3 spans" in lines[0] and "services: front, back" in lines[0]
    assert re.match(r"checkout  \[front\] INTERNAL [\d.]+ (µs|ms|s)$", lines[1]), lines[1]
    assert re.match(r"  charge card  \[back\] INTERNAL [\d.]+ (µs|ms|s)$", lines[2]), lines[2]
    assert re.match(
        r"lost parent  \[back\] INTERNAL [\d.]+ (µs|ms|s)  "
        r"\(orphan: parent 00000000000000aa never arrived\)$",
        lines[3],
    ), lines[3]
    assert len(lines) == 4


def test_json_for_scripts(stored_trace: tuple[Path, str]) -> None:
    store, trace_id = stored_trace
    document = view(store, "last", "--json")
    assert isinstance(document, dict)
    assert document["trace"]["trace_id"] == trace_id
    assert document["trace"]["services"] == ["front", "back"]
    spans = {span["name"]: span for span in document["spans"]}
    assert [span["name"] for span in document["spans"]] == ["checkout", "charge card", "lost parent"]
    assert spans["charge card"]["parent_id"] == spans["checkout"]["span_id"]
    assert (spans["charge card"]["depth"], spans["charge card"]["orphan"]) == (1, False)
    assert (spans["lost parent"]["depth"], spans["lost parent"]["orphan"]) == (0, True)
    assert spans["checkout"]["attributes"] == {"cart_items": 3}
    assert spans["checkout"]["pid"] != spans["charge card"]["pid"]


def test_rich_output_on_a_terminal(stored_trace: tuple[Path, str]) -> None:
    store, trace_id = stored_trace
    if shutil.which("script") is None:
        pytest.skip("`script` (util-linux) is needed to give the viewer a terminal")
    command = f"{VIEWER} --store {store} {trace_id}"
    # `script` puts the terminal's output, stderr included, on its stdout.
    result = run_process(
        ["script", "-qec", command, "/dev/null"], child_env(COLUMNS="160", TERM="xterm-256color")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    screen = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)
    assert "├── " in screen or "└── " in screen, screen
    assert "checkout" in screen and "charge card" in screen
    assert "orphan: parent 00000000000000aa never arrived" in screen
    plain = run_view(store, trace_id, "--plain")
    assert "├──" not in plain.stdout


def test_unknown_trace_and_missing_store_are_clear_errors(tmp_path: Path) -> None:
    missing = run_view(
        tmp_path / "nothing.db",
        expect_stderr=lambda stderr: stderr.startswith(
            f"logfire-run-view: no trace store at {tmp_path / 'nothing.db'} yet"
        ),
    )
    assert missing.returncode == 1
    assert not (tmp_path / "nothing.db").exists()


def test_unknown_trace_reference(stored_trace: tuple[Path, str]) -> None:
    store, _trace_id = stored_trace
    result = run_view(
        store, "ffffffffffff", expect_stderr=lambda stderr: "no trace matches 'ffffffffffff'" in stderr
    )
    assert result.returncode == 1


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_html_waterfall_renders_in_headless_chromium(stored_trace: tuple[Path, str], tmp_path: Path) -> None:
    store, trace_id = stored_trace
    page = tmp_path / "trace.html"
    output = view(store, "--html", str(page))
    assert output == f"wrote {page} (trace {trace_id}, 3 spans)\n"
    source = page.read_text()
    # Self-contained: nothing is loaded from anywhere, and the page's policy forbids it anyway.
    assert not re.search(r"\b(src|href)\s*=", source)
    assert "default-src 'none'" in source
    chromium = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    # Chromium's own chatter on stderr (GPU, D-Bus) is not ours to judge.
    dom = run_process(
        [*chromium, "--dump-dom", page.as_uri()], child_env(), timeout=120, expect_stderr=None
    ).stdout
    # What the script drew: one row per span, in tree order, with service and the orphan marker.
    assert 'data-rendered="3"' in dom, dom[-2000:]
    rows = re.findall(r'<div class="row( orphan)?" data-span-id="(\w+)">(.*?)</div>', dom)
    assert len(rows) == 3
    labels = [re.sub(r"<[^>]+>", " ", label) for _orphan, _id, label in rows]
    assert [label.split()[0] for label in labels] == ["checkout", "charge", "lost"]
    assert "front" in labels[0] and "back" in labels[1] and "back" in labels[2]
    assert [bool(orphan) for orphan, _id, _label in rows] == [False, False, True]
    assert '<span class="orphan-tag" title="parent 00000000000000aa never arrived">orphan</span>' in dom
    assert re.search(r'id="legend">.*front.*back', dom)
    screenshot = tmp_path / "trace.png"
    run_process(
        [*chromium, f"--screenshot={screenshot}", "--window-size=1200,400", page.as_uri()],
        child_env(),
        timeout=120,
        expect_stderr=None,
    )
    assert screenshot.stat().st_size > 5000


def test_a_database_that_is_not_a_store_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    other = tmp_path / "app.db"
    connection = sqlite3.connect(other)
    connection.execute("CREATE TABLE users (id INTEGER PRIMARY KEY)")
    connection.commit()
    connection.close()
    before = other.read_bytes()
    result = run_view(
        other,
        expect_stderr=f"logfire-run-view: {other} is an SQLite database but not a logfire-run trace store\n",
    )
    assert result.returncode == 1
    assert other.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["app.db"]


@pytest.mark.slow
def test_plain_text_on_a_terminal_when_rich_is_not_installed(
    stored_trace: tuple[Path, str], tmp_path: Path
) -> None:
    store, trace_id = stored_trace
    if shutil.which("script") is None:
        pytest.skip("`script` (util-linux) is needed to give the viewer a terminal")
    blocker = tmp_path / "no-rich"
    (blocker / "rich").mkdir(parents=True)
    (blocker / "rich" / "__init__.py").write_text("raise ImportError('rich is not installed here')\n")
    result = run_process(
        ["script", "-qec", f"{VIEWER} --store {store} {trace_id}", "/dev/null"],
        child_env(PYTHONPATH=str(blocker), TERM="xterm-256color"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.replace("\r", "").splitlines()
    assert lines[1].startswith("checkout  [front] INTERNAL "), lines
    assert "├" not in result.stdout and "\x1b[" not in result.stdout


# Hostile data: what a span holds is shown as text, never run or interpreted.

HOSTILE_NAMES = [
    "<!--<script>",
    "</script><script>document.body.setAttribute('data-pwned','1')</script>",
    "<img src=x onerror=\"document.body.setAttribute('data-pwned','2')\">",
    "line\u2028separator\u2029paragraph & <b>bold</b>",
    "__DATA__ __META__",
]
ESCAPES = [
    ("\x1b]0;pwned title\x07", "\\x1b]0;pwned title\\x07"),  # OSC: window title
    ("\x1b]52;c;cHduZWQ=\x07", "\\x1b]52;c;cHduZWQ=\\x07"),  # OSC 52: the clipboard
    ("\x1b[2J\x1b[31mred", "\\x1b[2J\\x1b[31mred"),  # clear screen, colour
    ("bell\x07", "bell\\x07"),
    ("a\nforged  [front] INTERNAL 1.0 ms", "a\\nforged  [front] INTERNAL 1.0 ms"),  # a forged tree line
    ("cr\rover", "cr\\rover"),
    ("c1\x9b2J nel\x85", "c1\\x9b2J nel\\x85"),
    ("bidi \u202eevil\u202c \u2066x\u2069", "bidi \\u202eevil\\u202c \\u2066x\\u2069"),
    ("tab\there", "tab\\there"),
    ("nul\x00del\x7f", "nul\\x00del\\x7f"),
    # Invisible text: zero-width characters, and Unicode tag characters (text no one sees, that a
    # model or a copy-paste reads: "ignore" written in tags below).
    ("zero\u200bwidth\u200c\u200d\u2060 bom\ufeff", "zero\\u200bwidth\\u200c\\u200d\\u2060 bom\\ufeff"),
    (
        "tags\U000e0069\U000e0067\U000e006e\U000e006f\U000e0072\U000e0065",
        "tags" + "".join(f"\\U{code:08x}" for code in (0xE0069, 0xE0067, 0xE006E, 0xE006F, 0xE0072, 0xE0065)),
    ),
    ("soft\u00adhyphen filler\u3164", "soft\\xadhyphen filler\\u3164"),
]

# What must never reach a terminal from the data (the viewer's own newlines are removed first):
# controls, and characters that show nothing (zero-width, tags, fillers).
INVISIBLE = "\u00ad\u200b-\u200f\u2060-\u2064\u3164\ufeff\U000e0000-\U000e007f"
CONTROL = re.compile(f"[\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069{INVISIBLE}]")

HOSTILE_APP = """
import json, sys
import logfire_run
names, escapes = json.loads(sys.argv[1]), json.loads(sys.argv[2])
with logfire_run.span("root " + names[0], **{"url.path": names[1], "http.request.method": "GET"}):
    for name in names[1:]:
        with logfire_run.span(name, detail=name):
            pass
    for raw in escapes:
        with logfire_run.span(raw, **{"celery.task_name": raw}):
            pass
"""


@pytest.fixture(scope="module")
def hostile_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "app.py").write_text(HOSTILE_APP)
    store = folder / "traces.db"
    env = agent_env(None, LOGFIRE_STORE=str(store))
    raw = [text for text, _shown in ESCAPES]
    result = run_launcher(
        [
            "--service-name",
            "svc\x1b[2J",
            "python",
            str(folder / "app.py"),
            json.dumps(HOSTILE_NAMES),
            json.dumps(raw),
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    listing = view(store, "--json")
    assert isinstance(listing, list) and len(listing) == 1
    return store, listing[0]["trace_id"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_html_page_shows_hostile_strings_as_text(hostile_store: tuple[Path, str], tmp_path: Path) -> None:
    store, _trace_id = hostile_store
    page = tmp_path / "hostile.html"
    view(store, "--html", str(page))
    spans = len(HOSTILE_NAMES) + len(ESCAPES)
    chromium = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    dom = subprocess.run(
        [*chromium, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    assert f'data-rendered="{spans}"' in dom, dom[-3000:]
    assert 'data-pwned="' not in dom  # the attribute an injected script would set
    assert "<img" not in dom and "<b>" not in dom
    names = re.findall(r'<span class="name">(.*?)</span>', dom, re.DOTALL)
    assert len(names) == spans
    # Each string is the text of its row: markup as text, escaped once; what would not show (line
    # and paragraph separators, zero-width and tag characters) written as the terminal views write it.
    assert html_unescape(names[0]) == "root <!--<script>"
    assert [html_unescape(name) for name in names[1 : len(HOSTILE_NAMES)]] == [
        name.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029") for name in HOSTILE_NAMES[1:]
    ]
    shown = {text for _raw, text in ESCAPES}
    assert {html_unescape(name) for name in names[len(HOSTILE_NAMES) :]} == shown
    assert not CONTROL.search(dom.replace("\n", "")), dom


def test_html_page_data_holds_no_invisible_text(hostile_store: tuple[Path, str], tmp_path: Path) -> None:
    # What the page's script puts on screen is the JSON it carries: every string of it, keys included.
    store, _trace_id = hostile_store
    page = tmp_path / "hostile.html"
    view(store, "--html", str(page))
    payload = re.search(r'<script type="application/json" id="trace-data">(.*?)</script>', page.read_text())
    assert payload is not None
    data = json.loads(payload.group(1))

    def strings(value: Any) -> Iterator[str]:
        if isinstance(value, str):
            yield value
        elif isinstance(value, dict):
            for key, item in value.items():
                yield key
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)

    found = [text for text in strings(data) if CONTROL.search(text.replace("\n", ""))]
    assert found == []
    names = {span["name"] for span in data["spans"]}
    assert {shown for _raw, shown in ESCAPES} <= names


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)


def test_text_viewer_escapes_control_characters(hostile_store: tuple[Path, str]) -> None:
    store, trace_id = hostile_store
    for args in ([trace_id], [], [trace_id, "--plain"]):
        output = run_view(store, *args).stdout
        assert not CONTROL.search(output.replace("\n", "")), output
    tree = run_view(store, trace_id).stdout
    lines = tree.splitlines()
    # One line per span, after the trace line: no forged ones.
    assert len(lines) == 1 + len(HOSTILE_NAMES) + len(ESCAPES), tree
    for _raw, shown in ESCAPES:
        assert any(line.strip().startswith(shown + "  [svc\\x1b[2J]") for line in lines), (shown, tree)
    assert "svc\\x1b[2J" in run_view(store).stdout


def test_rich_viewer_escapes_control_characters(hostile_store: tuple[Path, str]) -> None:
    store, trace_id = hostile_store
    if shutil.which("script") is None:
        pytest.skip("`script` (util-linux) is needed to give the viewer a terminal")
    screens = []
    for command in (f"{VIEWER} --store {store} {trace_id}", f"{VIEWER} --store {store}"):
        result = subprocess.run(
            ["script", "-qec", command, "/dev/null"],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(COLUMNS="400", TERM="xterm-256color"),
        )
        assert result.returncode == 0, result.stdout + result.stderr
        # Rich's own styling is SGR (ESC [ ... m); anything else of ESC or C0/C1 came from the data.
        screen = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout).replace("\r\n", "\n")
        assert not re.search(
            f"[\\x00-\\x09\\x0b-\\x1f\\x7f-\\x9f\\u2028\\u2029\\u202a-\\u202e\\u2066-\\u2069{INVISIBLE}]",
            screen,
        ), screen
        screens.append(screen)
    assert "\\x1b]52;c;cHduZWQ=\\x07" in screens[0] and "a\\nforged" in screens[0]
    assert "svc\\x1b[2J" in screens[0] and "svc\\x1b[2J" in screens[1]
