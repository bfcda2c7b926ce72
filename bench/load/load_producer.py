"""`python load_producer.py N`: N parent tasks, then every child they enqueued; all results awaited."""

from __future__ import annotations

import sys

from celery.result import AsyncResult
from load_tasks import app, parent

count = int(sys.argv[1])
parents = [parent.delay(number) for number in range(count)]
child_ids = [result.get(timeout=120) for result in parents]
children = [AsyncResult(child_id, app=app).get(timeout=120) for child_id in child_ids]
assert children == [number * 2 for number in range(count)], children
print(len(parents) + len(children))
