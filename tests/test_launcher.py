"""The launcher as a user meets it: forms, exec semantics, exit codes, errors, flags and --info."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import DEBUG_LINES, LAUNCHER, agent_env, assert_clean_stderr, run_launcher


def test_exit_status_of_the_app_passes_through(tmp_path: Path) -> None:
    result = run_launcher(["python", "-c", "import sys; sys.exit(3)"], agent_env())
    assert result.returncode == 3


def test_same_pid_and_this_interpreter(tmp_path: Path) -> None:
    script = tmp_path / "whoami.py"
    script.write_text("import os, sys; print(os.getpid(), sys.executable)\n")
    process = subprocess.Popen(
        [LAUNCHER, str(script)], env=agent_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = process.communicate(timeout=30)
    pid, executable = out.split()
    assert int(pid) == process.pid
    assert os.path.realpath(executable) == os.path.realpath(sys.executable)
    assert_clean_stderr(err)


def test_module_form_runs_with_this_interpreter(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "__main__.py").write_text("import sys; print('main', sys.argv[1:])\n")
    result = run_launcher(["-m", "pkg", "a", "b"], agent_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "main ['a', 'b']\n"


def test_sigterm_reaches_the_apps_handler(tmp_path: Path) -> None:
    script = tmp_path / "handler.py"
    script.write_text(
        "import signal, sys, time\n"
        "def on_term(signum, frame):\n"
        "    print('got SIGTERM', flush=True)\n"
        "    sys.exit(7)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    process = subprocess.Popen(
        [LAUNCHER, "python", str(script)],
        env=agent_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    os.kill(process.pid, signal.SIGTERM)
    out, err = process.communicate(timeout=30)
    assert out == "got SIGTERM\n"
    assert process.returncode == 7
    assert_clean_stderr(err)


def test_sigterm_without_handler_still_kills_by_signal(tmp_path: Path) -> None:
    script = tmp_path / "sleeper.py"
    script.write_text(
        "import logfire_run, time\nlogfire_run.info('up')\nprint('ready', flush=True)\ntime.sleep(30)\n"
    )
    process = subprocess.Popen(
        [LAUNCHER, "--exporter", "none", "python", str(script)],
        env=agent_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline() == "ready\n"
    os.kill(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGTERM
    assert_clean_stderr(err)


def test_no_command_is_a_usage_error() -> None:
    result = run_launcher([], agent_env(), expect_stderr=None)  # the usage error, checked below
    assert result.returncode == 2
    assert "no command to run" in result.stderr
    assert "usage: logfire-run" in result.stderr
    assert result.stdout == ""


def test_command_not_found_exits_127() -> None:
    result = run_launcher(
        ["no-such-program-xyz", "arg"],
        agent_env(),
        expect_stderr="logfire-run: no-such-program-xyz: command not found\n",
    )
    assert result.returncode == 127


def test_not_executable_exits_126_with_hint_for_py(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text("print('hi')\n")
    result = run_launcher(["--", str(script)], agent_env(), expect_stderr=None)  # the error, checked below
    assert result.returncode == 126
    assert "permission denied" in result.stderr
    assert f"logfire-run python {script}" in result.stderr


def test_plain_py_file_runs_with_this_interpreter(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text("import sys; print('args', sys.argv[1:])\n")
    result = run_launcher([str(script), "x"], agent_env())
    assert result.returncode == 0
    assert result.stdout == "args ['x']\n"


def test_invalid_flag_value_exits_2_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = run_launcher(
        ["--distributed-tracing", "maybe", "python", "-c", f"open({str(marker)!r}, 'w')"],
        agent_env(),
        expect_stderr=None,  # the error, checked below
    )
    assert result.returncode == 2
    assert "invalid distributed tracing value 'maybe'" in result.stderr
    assert "warn, true (1, t), false (0, f) or link" in result.stderr
    assert not marker.exists()


def test_invalid_env_value_exits_2() -> None:
    result = run_launcher(
        ["python", "-c", "pass"],
        agent_env(LOGFIRE_EXPORTER="kafka"),
        expect_stderr=re.compile(r"logfire-run: LOGFIRE_EXPORTER: unknown exporter 'kafka'.*\n"),
    )
    assert result.returncode == 2


def test_unknown_flag_exits_2() -> None:
    result = run_launcher(
        ["--frobnicate", "python", "-c", "pass"], agent_env(), expect_stderr=None
    )  # the usage error, checked below
    assert result.returncode == 2
    assert "unknown flag --frobnicate" in result.stderr


def test_version_and_help() -> None:
    from logfire_run import __version__

    version = run_launcher(["--version"], agent_env())
    assert version.stdout == f"logfire-run {__version__}\n"
    help_text = run_launcher(["--help"], agent_env()).stdout
    for flag in ("--service-name", "--distributed-tracing", "--exporter", "--disable", "--debug", "--info"):
        assert flag in help_text
    assert "LOGFIRE_DISTRIBUTED_TRACING" in help_text


def test_info_shows_values_sources_and_instrumentors() -> None:
    result = run_launcher(
        ["--service-name", "billing", "--info"], agent_env(LOGFIRE_DISTRIBUTED_TRACING="false")
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    service = next(line for line in lines if line.strip().startswith("service_name"))
    assert "billing" in service and "flag --service-name" in service
    policy = next(line for line in lines if line.strip().startswith("distributed_tracing"))
    assert "False" in policy and "env LOGFIRE_DISTRIBUTED_TRACING" in policy
    assert any(line.strip().startswith("flask") and "enabled" in line for line in lines)


def test_flags_reach_the_app_as_environment() -> None:
    result = run_launcher(
        [
            "--service-name",
            "svc",
            "--distributed-tracing=link",
            "--debug",
            "python",
            "-c",
            "import os; print(os.environ['LOGFIRE_SERVICE_NAME'], os.environ['LOGFIRE_DISTRIBUTED_TRACING'])",
        ],
        agent_env(),
        expect_stderr=DEBUG_LINES,  # --debug
    )
    assert result.returncode == 0
    assert result.stdout == "svc link\n"


def test_the_app_environment_holds_no_launcher_marker(tmp_path: Path) -> None:
    # The launcher marks the process it becomes; the agent takes the mark out, so the app (and what
    # walks its whole environment per call, like requests' proxy lookup) sees only what it was given.
    # Its children get the agent through PYTHONPATH as before.
    script = tmp_path / "env.py"
    script.write_text(
        "import os, subprocess, sys\n"
        "print(sorted(k for k in os.environ if k.startswith('LOGFIRE_RUN')))\n"
        "child = 'import sys; print(\"logfire_run\" in sys.modules)'\n"
        "subprocess.run([sys.executable, '-c', child], check=True)\n"
    )
    result = run_launcher(["python", str(script)], agent_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\nTrue\n"


def test_every_setting_is_documented_in_the_configuration_page_and_help() -> None:
    from logfire_run.agent.settings import SETTINGS

    from conftest import ROOT

    # docs/configuration.md has the full table; the README has the most used rows and links to it.
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert "(docs/configuration.md)" in (ROOT / "README.md").read_text()
    help_text = run_launcher(["--help"], agent_env()).stdout
    for setting in SETTINGS:
        assert f"`{setting.flag}" in page, setting.flag
        assert setting.env in page, setting.env
        assert setting.flag in help_text and setting.env in help_text


# The host never notices the agent: what a shell would do, the launcher does.


def test_an_empty_pythonpath_entry_still_means_the_current_directory(tmp_path: Path) -> None:
    # `export PYTHONPATH=$PYTHONPATH:/x` with PYTHONPATH unset gives ":/x": the empty entry is the
    # current directory, where gunicorn and celery apps are usually imported from.
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "localmod.py").write_text("VALUE = 'found in the current directory'\n")
    (elsewhere / "app.py").write_text("import localmod\nprint(localmod.VALUE)\n")
    env = agent_env(PYTHONPATH=f":{tmp_path / 'x'}")
    plain = subprocess.run(
        [sys.executable, str(elsewhere / "app.py")], env=env, cwd=project, capture_output=True, text=True
    )
    assert plain.stdout == "found in the current directory\n", plain.stderr
    result = run_launcher(["python", str(elsewhere / "app.py")], env, cwd=project)
    assert result.returncode == 0, result.stderr
    assert result.stdout == plain.stdout
    assert_clean_stderr(result.stderr)


#: The app: prints nothing but "ran"; with --debug, the agent's first line says how it started.
STARTED = "print('ran')"
VIA_PTH = "agent started via env"


def test_isolated_and_ignore_environment_pythons_start_the_agent_through_the_pth() -> None:
    for flags in (["-I", "-c"], ["-E", "-c"], ["-IE", "-c"], ["-X", "utf8", "-I", "-c"], ["-Ic"]):
        command = ["python", *flags, STARTED]
        result = run_launcher(command, agent_env())
        assert (result.returncode, result.stdout) == (0, "ran\n"), (flags, result.stderr)
        assert_clean_stderr(result.stderr)
        debug = run_launcher(["--debug", *command], agent_env(), expect_stderr=None)  # checked below
        assert debug.stdout == "ran\n"
        assert VIA_PTH in debug.stderr, debug.stderr
        assert debug.stderr.count("PYTHONPATH") == 1 and debug.stderr.startswith("logfire-run: "), (
            debug.stderr
        )
    # Env-only activation needs no launcher, and works under both flags.
    for flag in ("-I", "-E"):
        env_only = subprocess.run(
            [sys.executable, flag, "-c", STARTED],
            env=agent_env(LOGFIRE_RUN="1"),
            capture_output=True,
            text=True,
        )
        assert (env_only.stdout, env_only.stderr) == ("ran\n", "")
        debug = subprocess.run(
            [sys.executable, flag, "-c", STARTED],
            env=agent_env(LOGFIRE_RUN="1", LOGFIRE_DEBUG="1"),
            capture_output=True,
            text=True,
        )
        assert debug.stdout == "ran\n" and VIA_PTH in debug.stderr, debug.stderr


def test_python_dash_s_runs_without_the_agent_and_says_so_with_debug() -> None:
    code = "import sys; print('logfire_run' in sys.modules)"
    result = run_launcher(["python", "-S", "-c", code], agent_env())
    assert (result.returncode, result.stdout) == (0, "False\n")
    assert_clean_stderr(result.stderr)
    debug = run_launcher(["--debug", "python", "-S", "-c", code], agent_env(), expect_stderr=None)
    assert debug.stdout == "False\n"
    assert debug.stderr.startswith("logfire-run: ") and "-S" in debug.stderr and debug.stderr.count("\n") == 1


def test_a_relative_store_is_one_file_for_every_process(tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(
        "import os, subprocess, sys\n"
        "import logfire_run\n"
        "os.makedirs('sub', exist_ok=True)\n"
        "os.chdir('sub')  # as gunicorn --chdir does\n"
        "with logfire_run.span('parent'):\n"
        "    subprocess.run([sys.executable, '-c', 'import logfire_run\\n"
        'with logfire_run.span("child"): pass\'], check=True)\n'
    )
    for args, extra in ((["--store", "rel/traces.db"], {}), ([], {"LOGFIRE_STORE": "envrel/traces.db"})):
        result = run_launcher([*args, "python", str(app)], agent_env(**extra), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert_clean_stderr(result.stderr)
        folder = (args[1] if args else extra["LOGFIRE_STORE"]).split("/")[0]
        assert not (tmp_path / "sub" / folder).exists()
        connection = sqlite3.connect(tmp_path / folder / "traces.db")
        names = sorted(name for (name,) in connection.execute("SELECT name FROM spans"))
        connection.close()
        assert names == ["child", "parent"]


def test_an_executable_without_a_shebang_runs_with_sh(tmp_path: Path) -> None:
    script = tmp_path / "noshebang"
    script.write_text('echo "sh ran with $1"\nexit 3\n')
    script.chmod(0o755)
    # What a shell does with it (it execs the file, gets ENOEXEC, and runs it as a shell script):
    shell = subprocess.run(["/bin/sh", "-c", '"$0" one', str(script)], capture_output=True, text=True)
    result = run_launcher([str(script), "one"], agent_env())
    assert (result.returncode, result.stdout) == (shell.returncode, shell.stdout) == (3, "sh ran with one\n")
    assert_clean_stderr(result.stderr)


def test_a_shebang_python_that_cannot_import_the_agent_says_so_once(tmp_path: Path) -> None:
    venv = tmp_path / "other"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    script = tmp_path / "tool"
    script.write_text(
        f"#!{venv / 'bin' / 'python'}\n"
        "import subprocess, sys\n"
        "subprocess.run([sys.executable, '-c', 'pass'], check=True)  # a child: no second line\n"
        "print('ran')\n"
    )
    script.chmod(0o755)
    result = run_launcher([str(script)], agent_env(), expect_stderr=None)  # checked below
    assert (result.returncode, result.stdout) == (0, "ran\n")
    assert result.stderr == (
        f"logfire-run: {venv / 'bin' / 'python'} cannot import logfire_run; this process runs without "
        "the agent (install logfire-run for that interpreter, or run the script with logfire-run python)\n"
    )
