#!/usr/bin/env bash
# Prints "VERSION PATH" for each CPython the project claims (requires-python in pyproject.toml, up to
# the newest CPython release) that this machine has: pyenv's builds first, then python3.N on PATH.
# Each claimed version that is missing is reported in one line on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

NEWEST_CPYTHON_MINOR=14  # raise when a new CPython is released
oldest=$(sed -n 's/^requires-python *= *">=3\.\([0-9][0-9]*\)".*/\1/p' pyproject.toml)
if [ -z "$oldest" ]; then
  echo "pythons: cannot read requires-python (\">=3.N\") from pyproject.toml" >&2
  exit 1
fi
pyenv_root=$(pyenv root 2>/dev/null || echo "${PYENV_ROOT:-$HOME/.pyenv}")

for minor in $(seq "$oldest" "$NEWEST_CPYTHON_MINOR"); do
  version="3.$minor"
  found=""
  for candidate in $(ls -d "$pyenv_root"/versions/"$version".*/bin/python"$version" 2>/dev/null | sort -V -r) \
      "$(command -v "python$version" 2>/dev/null || true)"; do
    # A pyenv shim for a version that is not installed exists on PATH but fails to run.
    if [ -n "$candidate" ] && "$candidate" -c 'import sys; sys.exit(sys.implementation.name != "cpython")' \
        >/dev/null 2>&1; then
      found=$candidate
      break
    fi
  done
  if [ -n "$found" ]; then
    echo "$version $found"
  else
    echo "pythons: CPython $version (claimed by requires-python) is not on this machine; skipped" >&2
  fi
done
