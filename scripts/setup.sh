#!/usr/bin/env bash
# Creates a virtualenv with logfire-run and its test dependencies, at the versions of
# constraints/ci.txt, and the system packages the tests use (redis-server for Celery, chromium for the
# HTML viewer test). Safe to run again: it only adds what is missing, and skips pip altogether when
# nothing it installs from has changed since the last run.
#
#     bash scripts/setup.sh                      # .venv, with python3
#     PYTHON=python3.12 VENV=.venv-3.12 bash scripts/setup.sh
#     bash scripts/setup.sh --system             # the system packages only
#     VENV=.venv-3.12 bash scripts/setup.sh --venv   # the virtualenv only (several can run at once)
set -euo pipefail
cd "$(dirname "$0")/.."

parts=${1:-all}
case "$parts" in
  all | --system | --venv) ;;
  *) echo "setup: unknown argument $parts (--system, --venv or nothing)" >&2; exit 2 ;;
esac

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CONSTRAINTS=constraints/ci.txt
quiet() { grep -v '^WARNING: Location' || true; }  # this machine's pip config names a missing index

need_apt=()
if [ "$parts" != --venv ]; then
  command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
  command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
fi
if [ "${#need_apt[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing ${need_apt[*]} with apt-get" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "setup: ${need_apt[*]} missing and cannot be installed here; the tests that need them are skipped" >&2
  fi
fi
[ "$parts" = --system ] && exit 0

version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if [ -x "$VENV/bin/python" ] && [ "$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" != "$version" ]; then
  echo "setup: $VENV is not a Python $version venv; making it again" >&2
  rm -rf "$VENV"
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"

# What the venv was installed from: when none of it changed, the venv is as pip would leave it.
stamp="$VENV/.logfire-run-setup"
inputs=$(cat pyproject.toml "$CONSTRAINTS" scripts/setup.sh src/logfire_run.pth | cksum)
if [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
  exit 0
fi
rm -f "$stamp"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q -c "$CONSTRAINTS" --upgrade pip 2>&1 | quiet
# pip's own exit status is what counts (the filter above always succeeds).
if ! "${pip[@]}" install -q -c "$CONSTRAINTS" -e '.[test]' >"$VENV/setup.log" 2>&1; then
  quiet <"$VENV/setup.log" >&2
  echo "setup: pip could not install .[test] with $CONSTRAINTS (if pyproject.toml's dependencies" \
    "changed, refresh the lock: bash scripts/lock.sh)" >&2
  exit 1
fi
quiet <"$VENV/setup.log" >&2
"${pip[@]}" check >/dev/null || { "${pip[@]}" check >&2; exit 1; }
echo "setup: $VENV ready (Python $version, $CONSTRAINTS), pip check passed" >&2
"$VENV/bin/python" -c 'import logfire_run, flask, celery, fastapi' >/dev/null
echo "$inputs" >"$stamp"
