"""Glue between the public modules and the agent: start it on first use of the public API."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from logfire_run.agent.process.sdk import TracingSdk


def running_sdk() -> TracingSdk | None:
    """This process's SDK, set up (and the agent started) if it was not; None when tracing is off."""
    from logfire_run.agent import bootstrap
    from logfire_run.agent.process import state

    if state.sdk() is None:
        bootstrap.start("api")
        if state.sdk_state() == "off":
            from logfire_run.agent import report

            report.debug("the app called logfire_run's API: the SDK starts")
        state.start_sdk()
    return state.sdk()
