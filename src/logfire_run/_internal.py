"""Glue between the public modules and the agent: start it on first use of the public API."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from logfire_run.agent.sdk import Agent


def running_agent() -> Agent | None:
    """The agent of this process, started (with its SDK) if it was not; None when tracing is off."""
    from logfire_run.agent import bootstrap

    if bootstrap.agent() is None:
        bootstrap.start("api")
        bootstrap.ensure_sdk()
    return bootstrap.agent()
