"""The measured program: N `logger.info()` calls inside one span, each formatted into /dev/null.

Prints one JSON line: the loop's wall time per call (us), and the process's CPU time per record (us)
from the start of the loop to the end of a flush of the agent's pipelines, so that exporting every
record is counted.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from opentelemetry import trace

records = int(sys.argv[1])
handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 (lives as long as the process)
handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
log = logging.getLogger("shop")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.propagate = True
tracer = trace.get_tracer("bench")

with tracer.start_as_current_span("work"):
    for index in range(200):  # warm-up: caches, the agent's lazy set-up
        log.info("order %d shipped", index)
    cpu_start = time.process_time()
    start = time.perf_counter()
    for index in range(records):
        log.info("order %d shipped", index)
    wall = time.perf_counter() - start
provider = trace.get_tracer_provider()
flush = getattr(provider, "force_flush", None)
if callable(flush):
    flush()
try:  # the agents' log pipelines
    from opentelemetry._logs import get_logger_provider

    log_flush = getattr(get_logger_provider(), "force_flush", None)
    if callable(log_flush):
        log_flush()
except ImportError:
    pass
agent = sys.modules.get("logfire_run")  # loaded by logfire-run only; importing it would start it
if agent is not None:
    agent.force_flush()
cpu = time.process_time() - cpu_start
figures = {"wall_us": wall / records * 1e6, "cpu_us": cpu / records * 1e6}

# Under logfire-run, the record factory's own cost, in this process: the same loop with the agent's
# factory and with the one it wraps, alternately, the fastest of 15 each (steadier than the
# difference of two processes on a busy machine).
factory = logging.getLogRecordFactory()
wrapped = getattr(factory, "__wrapped__", None)
if wrapped is not None and sys.argv[2:] == ["ab"]:
    fastest = {"ours": float("inf"), "wrapped": float("inf")}
    with tracer.start_as_current_span("ab"):
        for _ in range(15):
            for name, installed in (("ours", factory), ("wrapped", wrapped)):
                logging.setLogRecordFactory(installed)
                start = time.perf_counter()
                for index in range(2000):
                    log.info("order %d shipped", index)
                fastest[name] = min(fastest[name], (time.perf_counter() - start) / 2000 * 1e6)
    logging.setLogRecordFactory(factory)
    figures["factory_us"] = fastest["ours"] - fastest["wrapped"]
print(json.dumps(figures))
