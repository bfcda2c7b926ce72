"""Environment variables as trace-context carriers, as OpenTelemetry's env-carriers specification
describes them: `TRACEPARENT`, `TRACESTATE` and `BAGGAGE`, upper case, values opaque.

What this module knows, and nothing more:

- the names: a propagator's field (`traceparent`, `x-b3-traceid`) becomes a variable name in upper
  case with `_` for `-`; the three W3C names are always the agent's to write;
- what this process was started with (`remember_inherited()`, called once when the agent starts):
  that is the parent's word about *its* span, read at start-up (the spec's "read during
  initialization") and never again;
- the rule for a child's environment (`child_environment()`): inside a span, the child gets the
  current context; outside, it gets none of the inherited values, which describe someone else's
  span. A value the app put there itself (in `os.environ` or in the `env=` it passes) is the app's
  own and is left as it is. The caller's mapping is never changed: what changes is a copy.

Values are never parsed here: the propagators do that (inbound through `state.extract`, outbound
through the global propagator's `inject`). Stdlib only, nothing from the agent: the bootstrap and the
subprocess instrumentor both use it.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

#: The spec's names for W3C Trace Context and Baggage.
NAMES = ("TRACEPARENT", "TRACESTATE", "BAGGAGE")

#: The carrier variables this process was started with (name -> value), read once at agent start.
inherited: dict[str, str] = {}


def env_name(field: str) -> str:
    """The environment variable that carries a propagator's field (`traceparent` -> `TRACEPARENT`)."""
    return field.upper().replace("-", "_")


def remember_inherited(environ: Mapping[str, str]) -> None:
    """Keep the carrier variables of `environ` as this process's inherited context (at start-up)."""
    inherited.clear()
    for name in NAMES:
        value = environ.get(name)
        if value is not None:
            inherited[name] = value


def inherited_carrier() -> dict[str, str]:
    """The inherited variables as a carrier for a propagator's `extract` (W3C field names)."""
    return {name.lower(): value for name, value in inherited.items()}


def child_env_list(
    entries: list[bytes] | None, environ: Mapping[bytes, bytes], carrier: Mapping[str, str]
) -> list[bytes] | None:
    """`child_environment` in the form `_posixsubprocess.fork_exec` takes: `NAME=value` bytes.

    `entries` is the list subprocess built from the caller's `env=`, or None for "inherit", in which
    case `environ` (`os.environ`'s own bytes dictionary) is what the child would get. Working on these
    avoids `dict(os.environ)`, which decodes every name and value (about 1 us each), and subprocess's
    re-encoding of a whole mapping; only the carrier entries are looked at.
    """
    wanted, names, prefixes = _encoded(carrier)
    current: Mapping[bytes, bytes] = environ
    if entries is not None:
        found: dict[bytes, bytes] = {}
        for entry in entries:
            if entry.startswith(prefixes):
                key, _, value = entry.partition(b"=")
                found.setdefault(key, value)
        current = found
    changes = _byte_changes(current, wanted, names)
    if not changes:
        return None
    if entries is None:
        kept = [name + b"=" + value for name, value in environ.items() if name not in changes]
    else:
        changed = tuple(name + b"=" for name in changes)
        kept = [entry for entry in entries if not entry.startswith(changed)]
    kept.extend(name + b"=" + value for name, value in changes.items() if value is not None)
    return kept


def child_environ_bytes(
    environ: Mapping[bytes, bytes], carrier: Mapping[str, str]
) -> dict[bytes, bytes] | None:
    """`child_environment` for `os.environ` (its bytes dictionary): a copy with the changes, or None."""
    wanted, names, _ = _encoded(carrier)
    changes = _byte_changes(environ, wanted, names)
    if not changes:
        return None
    environment = dict(environ)
    for name, value in changes.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return environment


def _byte_changes(
    current: Mapping[bytes, bytes], wanted: Mapping[bytes, bytes], names: tuple[bytes, ...]
) -> dict[bytes, bytes | None]:
    """Name -> new value (None: remove) for the carrier variables that are the agent's to write."""
    inherited_bytes = _inherited_bytes()
    changes: dict[bytes, bytes | None] = {}
    for name in names:
        present = current.get(name)
        if present is not None and inherited_bytes.get(name) != present:
            continue  # the app's own value
        new = wanted.get(name)
        if new != present:
            changes[name] = new
    return changes


_NAMES_BYTES = tuple(name.encode() for name in NAMES)
_last_encoded: tuple[object, tuple[dict[bytes, bytes], tuple[bytes, ...], tuple[bytes, ...]]] = (
    None,
    ({}, (), ()),
)


def _encoded(carrier: Mapping[str, str]) -> tuple[dict[bytes, bytes], tuple[bytes, ...], tuple[bytes, ...]]:
    """The carrier as bytes entries, the names to look at, and their `NAME=` prefixes.

    Kept for the last carrier seen: the instrumentor hands the same dict for as long as the current
    context is the same, so a loop of children inside one span encodes it once.
    """
    global _last_encoded
    last = _last_encoded
    if last[0] is carrier:
        return last[1]
    wanted = {os.fsencode(env_name(field)): os.fsencode(value) for field, value in carrier.items()}
    names = (*_NAMES_BYTES, *(name for name in wanted if name not in _NAMES_BYTES))
    encoded = (wanted, names, tuple(name + b"=" for name in names))
    _last_encoded = (carrier, encoded)
    return encoded


_inherited_encoded: tuple[dict[str, str], dict[bytes, bytes]] = ({}, {})


def _inherited_bytes() -> dict[bytes, bytes]:
    global _inherited_encoded
    if _inherited_encoded[0] != inherited:
        _inherited_encoded = (dict(inherited), {os.fsencode(k): os.fsencode(v) for k, v in inherited.items()})
    return _inherited_encoded[1]


def child_environment(base: Mapping[str, str], carrier: Mapping[str, str]) -> dict[str, str] | None:
    """The environment a child should get instead of `base`, or None when `base` is right as it is.

    `carrier` is the current context as the propagator injects it (empty outside any span). A
    variable is the agent's to write when `base` lacks it or holds the inherited value; any other
    value was put there by the app and is kept. Raises nothing the caller must handle other than
    what reading `base` raises (the caller falls back to `base` then).
    """
    wanted = {env_name(field): value for field, value in carrier.items()}
    changes: dict[str, str | None] = {}
    for name in (*NAMES, *(name for name in wanted if name not in NAMES)):
        current = base.get(name)
        if current is not None and inherited.get(name) != current:
            continue  # the app's own value
        value = wanted.get(name)
        if value != current:
            changes[name] = value
    if not changes:
        return None
    if any(isinstance(key, bytes) for key in base):
        return None  # a raw bytes environment is the caller's, byte for byte
    environment = dict(base)
    for name, value in changes.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return environment
