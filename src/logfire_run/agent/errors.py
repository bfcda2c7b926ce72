"""The agent's exceptions. Only configuration errors ever reach a caller; everything else is reported."""

from __future__ import annotations


class LogfireRunError(Exception):
    """Base class of the errors logfire-run raises."""


class ConfigError(LogfireRunError, ValueError):
    """A flag, environment variable or `configure()` argument has a value the agent does not accept."""
