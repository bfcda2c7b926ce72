"""The agent's exceptions. Only configuration errors ever reach a caller; everything else is reported."""

from __future__ import annotations


class LogfireRunError(Exception):
    """Base class of the errors logfire-run raises."""


class ConfigError(LogfireRunError, ValueError):
    """A flag, environment variable or `configure()` argument has a value the agent does not accept.

    `variable` names the environment variable when there is one. `usable` is what is left of the value
    once the parts that are not accepted are dropped (`store,kafka` keeps `store`), as parsed (`value`)
    and as text for the variable (`raw`); both are None when nothing is usable and the default applies.
    """

    def __init__(
        self,
        message: str,
        *,
        variable: str | None = None,
        usable: object = None,
        usable_raw: str | None = None,
    ) -> None:
        super().__init__(message)
        self.variable = variable
        self.usable = usable
        self.usable_raw = usable_raw
