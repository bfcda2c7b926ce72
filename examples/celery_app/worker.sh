#!/usr/bin/env sh
# The worker command line: prefork pool, each child replaced after 100 tasks. Every flag after
# `celery` is Celery's own; logfire-run only needs to come first.
cd "$(dirname "$0")" || exit 1
exec logfire-run --service-name worker \
    celery -A tasks worker --pool prefork --concurrency 4 --max-tasks-per-child 100 --loglevel INFO "$@"
