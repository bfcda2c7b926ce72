#!/usr/bin/env bash
# Refreshes constraints/ci.txt, the versions every test set-up installs (scripts/setup.sh passes it to
# pip with -c). Run it on purpose, when a dependency should move, and commit the result:
#
#     bash scripts/lock.sh
#
# For each CPython of scripts/pythons.sh it resolves `.[test]` from nothing (pip's resolver, in a
# throwaway venv, nothing installed), then writes one file: a version that is the same on every
# Python is one plain line; one that differs (a release that dropped a Python) gets a line per Python
# with a python_version marker.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
quiet() { grep -v '^WARNING: Location' || true; }

mapfile -t pythons < <(bash scripts/pythons.sh)
[ "${#pythons[@]}" -gt 0 ] || { echo "lock: no Python to resolve for" >&2; exit 1; }
for line in "${pythons[@]}"; do
  read -r version python <<<"$line"
  echo "lock: resolving .[test] for CPython $version ($python)" >&2
  "$python" -m venv "$work/venv-$version"
  "$work/venv-$version/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip 2>&1 | quiet
  "$work/venv-$version/bin/python" -m pip --version | awk '{print $2}' >"$work/pip-$version"
  "$work/venv-$version/bin/python" -m pip install -q --disable-pip-version-check --dry-run \
    --ignore-installed --report "$work/report-$version.json" -e '.[test]' 2>&1 | quiet
done

python3 - "$work" constraints/ci.txt "${pythons[@]%% *}" <<'PY'
import json
import re
import sys
from pathlib import Path

work, output, versions = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


pins: dict[str, dict[str, str]] = {}  # package -> {python version: package version}
for version in versions:
    report = json.loads((work / f"report-{version}.json").read_text())
    for item in report["install"]:
        name = normalized(item["metadata"]["name"])
        if name != "logfire-run":
            pins.setdefault(name, {})[version] = item["metadata"]["version"]
    pins.setdefault("pip", {})[version] = (work / f"pip-{version}").read_text().strip()

lines = [
    "# The versions the tests install: scripts/setup.sh passes this file to pip with -c.",
    "# Written by scripts/lock.sh (do not edit by hand; run it on purpose and commit the result),",
    f"# resolved from pyproject.toml's [test] extra for CPython {', '.join(versions)}.",
]
for name in sorted(pins):
    by_python = pins[name]
    if len(by_python) == len(versions) and len(set(by_python.values())) == 1:
        lines.append(f"{name}=={next(iter(by_python.values()))}")
    else:
        lines.extend(
            f'{name}=={pinned} ; python_version == "{version}"' for version, pinned in by_python.items()
        )
output.write_text("\n".join(lines) + "\n")
print(f"lock: wrote {output} ({len(pins)} packages)", file=sys.stderr)
PY
