"""The bootstrap in real interpreters: sitecustomize chaining, laziness, children, env-only activation."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from conftest import (
    DEBUG_LINES,
    LAUNCHER,
    OtlpReceiver,
    agent_env,
    child_env,
    own_folders,
    render_tree,
    run_launcher,
    run_process,
)

#: What the docs promise the agent does not import at start-up (README, docs/configuration.md and
#: docs/http.md): the instrumented libraries, OpenTelemetry (API and SDK), wrapt, and what the
#: instrumentor scan needs (importlib.metadata, packaging). A name covers its submodules too.
LAZY_MODULES = (
    "requests",
    "httpx",
    "flask",
    "fastapi",
    "celery",
    "concurrent.futures",
    "opentelemetry",
    "opentelemetry.sdk",
    "wrapt",
    "packaging",
    "importlib.metadata",
)
SHOW_MODULES = "import sys; print(sorted(sys.modules))"


def _imported_lazy_modules(loaded: set[str]) -> list[str]:
    return sorted(
        name for name in loaded if any(name == lazy or name.startswith(lazy + ".") for lazy in LAZY_MODULES)
    )


@pytest.mark.parametrize("activation", ["launcher", "env-only"])
def test_nothing_lazy_is_imported_at_startup_with_a_warm_cache(tmp_path: Path, activation: str) -> None:
    # The instrumentor scan (entry points, with importlib.metadata and packaging) runs on a cache
    # miss; the promise is for every start after that. The cache key includes sys.path, and so the
    # working directory's modification time (sys.path[0] is '' for -c): a folder of its own, unchanged.
    workdir = tmp_path / "work"
    workdir.mkdir()
    cache = own_folders().cache / "logfire-run"

    def start() -> set[str]:
        if activation == "launcher":
            result = run_launcher(["python", "-c", SHOW_MODULES], agent_env(), cwd=workdir)
        else:
            result = run_process(
                [sys.executable, "-c", SHOW_MODULES], agent_env(LOGFIRE_RUN="1"), cwd=workdir
            )
        assert result.returncode == 0, result.stderr
        loaded = set(eval(result.stdout))
        assert "logfire_run.agent.bootstrap" in loaded, "the agent did not start"
        return loaded

    cold = start()
    assert [path.name for path in cache.iterdir()], "the first start wrote no instrumentor cache"
    assert "importlib.metadata" in cold, "the first start did not scan: the cache was warm already"
    warm = start()
    assert _imported_lazy_modules(warm) == []


def _as_launched(user_dir: Path) -> dict[str, str]:
    """The environment the launcher gives the app: our sitecustomize folder first on PYTHONPATH.

    These tests run the app's interpreter directly with it; the test after them goes through the
    launcher itself.
    """
    from logfire_run.agent.paths import SITECUSTOMIZE_DIR

    return agent_env(PYTHONPATH=os.pathsep.join([SITECUSTOMIZE_DIR, str(user_dir)]))


def test_user_sitecustomize_on_pythonpath_runs_once(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    counter = tmp_path / "count"
    (user / "sitecustomize.py").write_text(
        f"open({str(counter)!r}, 'a').write('x')\nUSER_SITECUSTOMIZE = True\n"
    )
    code = (
        "import sitecustomize, sys\n"
        "print(sitecustomize.USER_SITECUSTOMIZE, 'logfire_run.agent.bootstrap' in sys.modules)"
    )
    result = run_process([sys.executable, "-c", code], _as_launched(user))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True True\n"
    assert counter.read_text() == "x"


@pytest.mark.parametrize("env_only_too", [False, True], ids=["launcher", "launcher-with-LOGFIRE_RUN"])
def test_user_sitecustomize_runs_once_per_pid_via_launcher(tmp_path: Path, env_only_too: bool) -> None:
    # The launcher is a Python program too; its own interpreter must not run the user's sitecustomize
    # (or usercustomize) before the exec, or it runs twice in one PID.
    user = tmp_path / "user"
    user.mkdir()
    counter = tmp_path / "count"
    for name in ("sitecustomize", "usercustomize"):
        line = f"open({str(counter)!r}, 'a').write('{name} %d\\n' % os.getpid())"
        (user / f"{name}.py").write_text(f"import os\n{line}\n")
    extra = {"LOGFIRE_RUN": "1"} if env_only_too else {}
    code = "import os, sys; print(os.getpid(), 'logfire_run.agent.bootstrap' in sys.modules)"
    result = run_launcher([sys.executable, "-c", code], agent_env(PYTHONPATH=str(user), **extra))
    assert result.returncode == 0, result.stderr
    pid, agent_flag = result.stdout.split()
    assert agent_flag == "True"
    # usercustomize is imported only when the user site is enabled; where it is, it runs once too.
    ran = counter.read_text().splitlines()
    assert ran[0] == f"sitecustomize {pid}"
    assert ran[1:] in ([], [f"usercustomize {pid}"])


def test_sitecustomize_in_site_packages_still_runs(tmp_path: Path) -> None:
    # A throwaway virtualenv that sees our site-packages (so it can import logfire_run) and has a
    # sitecustomize of its own in its own site-packages, as a distribution would.
    venv = tmp_path / "venv"
    made = run_process(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], child_env()
    )
    assert made.returncode == 0, made.stdout
    python = venv / "bin" / "python"
    purelib = run_process(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], child_env()
    ).stdout.strip()
    our_site = sysconfig.get_paths()["purelib"]
    Path(purelib, "ours.pth").write_text(f"import site; site.addsitedir({our_site!r})\n")
    counter = tmp_path / "count"
    Path(purelib, "sitecustomize.py").write_text(
        f"import os\nopen({str(counter)!r}, 'a').write(f'{{os.getpid()}}\\n')\nDIST = 1\n"
    )
    code = (
        "import os, sitecustomize, sys\n"
        "print(os.getpid(), sitecustomize.DIST, 'logfire_run.agent.bootstrap' in sys.modules)"
    )
    result = run_launcher([str(python), "-c", code], agent_env())
    assert result.returncode == 0, result.stderr
    pid, dist_flag, agent_flag = result.stdout.split()
    assert (dist_flag, agent_flag) == ("1", "True")
    assert counter.read_text().splitlines() == [pid]


def test_error_in_user_sitecustomize_is_reported_by_python_as_usual(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "sitecustomize.py").write_text("raise RuntimeError('boom from user sitecustomize')\n")
    command = [sys.executable, "-c", "import sys; print('ran', 'logfire_run.agent.bootstrap' in sys.modules)"]
    # Python reports the error itself (on stderr), the same way with the agent as without it.
    plain = run_process(command, agent_env(PYTHONPATH=str(user)), expect_stderr=None)
    under_agent = run_process(command, _as_launched(user), expect_stderr=plain.stderr)
    assert plain.stdout == "ran False\n"
    assert under_agent.stdout == "ran True\n"
    assert "boom from user sitecustomize" in plain.stderr


def test_interpreter_without_the_agent_runs_and_says_so_once(tmp_path: Path) -> None:
    venv = tmp_path / "other"
    made = run_process([sys.executable, "-m", "venv", "--without-pip", str(venv)], child_env())
    assert made.returncode == 0, made.stdout
    code = (
        "import subprocess, sys; print('logfire_run' in sys.modules); "
        "subprocess.run([sys.executable, '-c', 'pass'], check=True)"
    )
    python = str(venv / "bin" / "python")
    # The process the launcher became says so, once; its child, another process of that Python, does not.
    result = run_launcher(
        [python, "-c", code],
        agent_env(),
        expect_stderr=re.compile(rf"logfire-run: {re.escape(python)} cannot import logfire_run; [^\n]*\n"),
    )
    assert result.returncode == 0
    assert result.stdout == "False\n"
    debug = run_launcher(
        ["--debug", python, "-c", code],
        agent_env(),
        expect_stderr=lambda stderr: stderr.count("cannot import logfire_run") == 2,
    )
    assert debug.returncode == 0


@pytest.mark.slow
def test_children_are_traced_once_each(receiver: OtlpReceiver, tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing, subprocess, sys
            import logfire_run
            from logfire_run.propagate import get_context

            def child(carrier):
                import logfire_run
                from logfire_run.propagate import attach_context
                with attach_context(carrier):
                    logfire_run.info("in mp child")

            if __name__ == "__main__":
                with logfire_run.span("parent"):
                    carrier = get_context()
                    code = (
                        "import json, sys, logfire_run\\n"
                        "from logfire_run.propagate import attach_context\\n"
                        "with attach_context(json.loads(sys.argv[1])):\\n"
                        "    logfire_run.info('in subprocess')\\n"
                    )
                    import json
                    subprocess.run([sys.executable, "-c", code, json.dumps(carrier)], check=True)
                    for method in ("spawn", "forkserver", "fork"):
                        process = multiprocessing.get_context(method).Process(target=child, args=(carrier,))
                        process.start()
                        process.join()
                        assert process.exitcode == 0
            """
        )
    )
    # --debug: each process's start is counted below.
    result = run_launcher(["--debug", "python", str(script)], agent_env(receiver), expect_stderr=DEBUG_LINES)
    assert result.returncode == 0, result.stderr
    spans = receiver.wait_count(5)
    assert len(spans) == 5, render_tree(spans)
    parent = next(span for span in spans if span.name == "parent")
    children = [span for span in spans if span.name != "parent"]
    assert sorted(span.name for span in children) == ["in mp child"] * 3 + ["in subprocess"]
    assert all(span.parent_id == parent.span_id and span.trace_id == parent.trace_id for span in children)
    assert len({span.pid for span in spans}) == 5
    # Each interpreter that started fresh (the script, the subprocess, spawn, the forkserver and its
    # child inherit the forkserver's) started the agent exactly once.
    starts = [line for line in result.stderr.splitlines() if "agent started via" in line]
    pids = [line.split("]")[0] for line in starts]
    assert len(pids) == len(set(pids)), result.stderr
    assert len(starts) >= 4


def test_no_inherit_keeps_children_plain(receiver: OtlpReceiver) -> None:
    code = (
        "import subprocess, sys\n"
        "check = \"import sys; print('logfire_run.agent.bootstrap' in sys.modules)\"\n"
        "out = subprocess.run([sys.executable, '-c', check], capture_output=True, text=True)\n"
        "print('logfire_run.agent.bootstrap' in sys.modules, out.stdout.strip())\n"
    )
    result = run_launcher(["--no-inherit", "python", "-c", code], agent_env(receiver))
    assert result.stdout == "True False\n"
    inherited = run_launcher(["python", "-c", code], agent_env(receiver))
    assert inherited.stdout == "True True\n"


def test_env_only_activation(receiver: OtlpReceiver) -> None:
    env = agent_env(receiver, LOGFIRE_RUN="1", LOGFIRE_SERVICE_NAME="env-only")
    code = "import logfire_run\nwith logfire_run.span('from env'):\n    pass\n"
    result = run_process([sys.executable, "-c", code], env)
    assert result.returncode == 0, result.stderr
    spans = receiver.wait_count(1)
    assert [(span.name, span.service) for span in spans] == [("from env", "env-only")]


def test_env_only_off_loads_nothing() -> None:
    result = run_process(
        [sys.executable, "-c", "import sys; print(any(m.startswith('logfire_run') for m in sys.modules))"],
        agent_env(),
    )
    assert result.stdout == "False\n"


def test_env_only_invalid_value_reports_and_runs(receiver: OtlpReceiver) -> None:
    env = agent_env(receiver, LOGFIRE_RUN="1", LOGFIRE_DISTRIBUTED_TRACING="sometimes")
    code = "import logfire_run\nwith logfire_run.span('still traced'):\n    print('app output')\n"
    result = run_process(
        [sys.executable, "-c", code],
        env,
        expect_stderr=re.compile(
            r"logfire-run: [^\n]*invalid distributed tracing value 'sometimes'[^\n]*; using the default\n"
        ),
    )
    assert result.returncode == 0
    assert result.stdout == "app output\n"
    assert [span.name for span in receiver.wait_count(1)] == ["still traced"]


@pytest.mark.skipif(not os.path.exists("/bin/sh"), reason="needs /bin/sh")
def test_a_non_python_command_runs_unchanged_and_its_python_children_are_traced(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text(
        "#!/bin/sh\n"
        'echo "pid $$ args $# $*"\n'
        "python -c \"import sys; print('python child traced', 'logfire_run.agent' in sys.modules)\"\n"
        "echo 'the job writes to stderr' >&2\n"
        "exit 3\n"
    )
    script.chmod(0o755)
    plain = subprocess.Popen(
        [str(script), "a", "b c"], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    plain_out, plain_err = plain.communicate(timeout=60)
    launched = subprocess.Popen(
        [LAUNCHER, str(script), "a", "b c"],
        env=agent_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = launched.communicate(timeout=60)
    # The shell script runs in the launcher's process (exec), with its arguments, output and exit
    # status untouched; the Python it starts inherits the agent.
    assert (plain.returncode, launched.returncode) == (3, 3)
    assert plain_out == f"pid {plain.pid} args 2 a b c\npython child traced False\n"
    assert out == f"pid {launched.pid} args 2 a b c\npython child traced True\n"
    assert err == plain_err == "the job writes to stderr\n"
