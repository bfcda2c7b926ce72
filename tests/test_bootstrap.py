"""The bootstrap in real interpreters: sitecustomize chaining, laziness, children, env-only activation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from conftest import OtlpReceiver, agent_env, assert_clean_stderr, render_tree, run_launcher

LAZY_MODULES = ("requests", "httpx", "flask", "fastapi", "celery", "concurrent.futures", "opentelemetry.sdk")


def test_nothing_instrumented_is_imported_at_startup() -> None:
    result = run_launcher(["python", "-c", "import sys; print(sorted(sys.modules))"], agent_env())
    assert result.returncode == 0, result.stderr
    loaded = set(eval(result.stdout))
    assert "logfire_run.agent.bootstrap" in loaded, "the agent did not start"
    for name in LAZY_MODULES:
        assert name not in loaded, f"{name} was imported at startup"
    assert_clean_stderr(result.stderr)


def _as_launched(user_dir: Path) -> dict[str, str]:
    """The environment the launcher gives the app: our sitecustomize folder first on PYTHONPATH.

    These tests run the app's interpreter directly with it: the launcher is a Python process of its
    own, which (like `opentelemetry-instrument`) runs the user's sitecustomize for itself before exec.
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
    result = subprocess.run(
        [sys.executable, "-c", code], env=_as_launched(user), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "True True\n"
    assert counter.read_text() == "x"
    assert_clean_stderr(result.stderr)


def test_sitecustomize_in_site_packages_still_runs(tmp_path: Path) -> None:
    # A throwaway virtualenv that sees our site-packages (so it can import logfire_run) and has a
    # sitecustomize of its own in its own site-packages, as a distribution would.
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True
    )
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
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
    assert_clean_stderr(result.stderr)


def test_error_in_user_sitecustomize_is_reported_by_python_as_usual(tmp_path: Path) -> None:
    user = tmp_path / "user"
    user.mkdir()
    (user / "sitecustomize.py").write_text("raise RuntimeError('boom from user sitecustomize')\n")
    command = [sys.executable, "-c", "import sys; print('ran', 'logfire_run.agent.bootstrap' in sys.modules)"]
    plain = subprocess.run(command, env=agent_env(PYTHONPATH=str(user)), capture_output=True, text=True)
    under_agent = subprocess.run(command, env=_as_launched(user), capture_output=True, text=True)
    assert plain.stdout == "ran False\n"
    assert under_agent.stdout == "ran True\n"
    assert "boom from user sitecustomize" in plain.stderr
    assert under_agent.stderr == plain.stderr


def test_interpreter_without_the_agent_runs_and_says_so_once(tmp_path: Path) -> None:
    venv = tmp_path / "other"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    code = (
        "import subprocess, sys; print('logfire_run' in sys.modules); "
        "subprocess.run([sys.executable, '-c', 'pass'], check=True)"
    )
    result = run_launcher([str(venv / "bin" / "python"), "-c", code], agent_env())
    assert result.returncode == 0
    assert result.stdout == "False\n"
    # The process the launcher became says so; its child, another process of that Python, does not.
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"logfire-run: {venv / 'bin' / 'python'} cannot import logfire_run; ")
    debug = run_launcher(["--debug", str(venv / "bin" / "python"), "-c", code], agent_env())
    assert debug.stderr.count("cannot import logfire_run") == 2


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
    result = run_launcher(["--debug", "python", str(script)], agent_env(receiver))
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
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    spans = receiver.wait_count(1)
    assert [(span.name, span.service) for span in spans] == [("from env", "env-only")]
    assert_clean_stderr(result.stderr)


def test_env_only_off_loads_nothing() -> None:
    env = agent_env()
    result = subprocess.run(
        [sys.executable, "-c", "import sys; print(any(m.startswith('logfire_run') for m in sys.modules))"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.stdout == "False\n"


def test_env_only_invalid_value_reports_and_runs(receiver: OtlpReceiver) -> None:
    env = agent_env(receiver, LOGFIRE_RUN="1", LOGFIRE_DISTRIBUTED_TRACING="sometimes")
    code = "import logfire_run\nwith logfire_run.span('still traced'):\n    print('app output')\n"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert result.stdout == "app output\n"
    assert result.stderr.count("invalid distributed tracing value 'sometimes'") == 1
    assert "using the default" in result.stderr
    assert [span.name for span in receiver.wait_count(1)] == ["still traced"]


@pytest.mark.skipif(shutil.which("true") is None, reason="needs the true program")
def test_non_python_commands_run_unchanged() -> None:
    result = run_launcher(["true"], agent_env())
    assert result.returncode == 0
    assert_clean_stderr(result.stderr)
    assert os.path.exists(shutil.which("true") or "")
