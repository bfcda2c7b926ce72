#!/usr/bin/env bash
# The README's first command: set up .venv (scripts/setup.sh), then run the demo system under
# logfire-run and print the trace it produced. Arguments go to examples/demo/run.py (--no-celery,
# --store PATH, --html FILE, --otlp URL, --otlp-protocol grpc).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo/run.py "$@"
