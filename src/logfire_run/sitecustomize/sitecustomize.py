"""logfire-run's bootstrap, found first on PYTHONPATH by every interpreter the launcher starts.

It starts the agent with one guarded import, then runs the `sitecustomize` it shadows (the user's or
the distribution's), exactly once and under that name, so the process behaves as it would without the
agent. An interpreter that cannot import `logfire_run` (another virtualenv, another Python) skips the
agent silently. Kept to old syntax and the standard library: any Python may read this file.
"""


def _start_agent():
    # type: () -> None
    try:
        from logfire_run.agent import bootstrap
    except Exception:
        import os
        import sys

        # Said once, by the process the launcher became (a script whose "#!" names another Python, or
        # an interpreter given by path); its children say it only with LOGFIRE_DEBUG.
        top = os.environ.get("LOGFIRE_RUN_LAUNCHED_PID") == str(os.getpid())
        if top or os.environ.get("LOGFIRE_DEBUG", "").strip().lower() in ("1", "true", "t", "yes", "on"):
            try:
                sys.stderr.write(
                    "logfire-run: %s cannot import logfire_run; this process runs without the agent "
                    "(install logfire-run for that interpreter, or run the script with logfire-run python)\n"
                    % sys.executable
                )
            except Exception:
                pass
        return
    bootstrap.start("sitecustomize")


def _run_shadowed_sitecustomize():
    # type: () -> None
    import os
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    path = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != here]
    path_finder = getattr(sys.modules.get("_frozen_importlib_external"), "PathFinder", None)
    if path_finder is None:
        return
    spec = path_finder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = sys.modules["_frozen_importlib"].module_from_spec(spec)
    # The shadowed module takes our place in sys.modules; the import system returns it to `site`.
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


try:
    _start_agent()
except Exception:
    pass
# Errors raised by the shadowed sitecustomize reach `site`, which reports them as it always does.
_run_shadowed_sitecustomize()
