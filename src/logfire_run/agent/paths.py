"""The launcher's paths and marks: the sitecustomize folder, and the variable naming the launched PID.

Stdlib only, no state. Where the cache and the store are, and how files are made, is `logfire_run.files`.
"""

from __future__ import annotations

import os

#: The folder the launcher puts first on PYTHONPATH; child interpreters find `sitecustomize` there.
SITECUSTOMIZE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sitecustomize")
#: Set by the launcher for the process it becomes (its PID), so that process alone reports an
#: interpreter that cannot import logfire_run; the agent takes it out of the app's environment.
LAUNCHED_PID = "LOGFIRE_RUN_LAUNCHED_PID"
