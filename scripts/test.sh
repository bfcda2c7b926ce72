#!/usr/bin/env bash
# The project's test command: set up, then lint, type-check and run the test suite.
#
#     bash scripts/test.sh                  the whole suite, on python3 (in .venv)
#     bash scripts/test.sh --fast           the inner loop: the tests not marked slow (under a minute)
#     bash scripts/test.sh --all-pythons    what CI runs: the whole suite on every CPython that
#                                           pyproject.toml claims and this machine has, one venv each
#     bash scripts/test.sh ... -- ARGS      ARGS go to pytest (a file, -k EXPR, -x ...)
#
# Tests marked heavy (long repetitions of a race) run on every Python version the plain command uses,
# but --all-pythons runs them only on python3's version, to keep CI under its time limit.
#
# ruff and mypy run once, in .venv. With --all-pythons, python3's version uses .venv and each other
# version .venv-3.N; a claimed version that is missing is reported in one line and skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

fast=0
all_pythons=0
pytest_args=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --fast) fast=1 ;;
    --all-pythons) all_pythons=1 ;;
    --) shift; pytest_args+=("$@"); break ;;
    *) pytest_args+=("$1") ;;
  esac
  shift
done
[ "$fast" = 1 ] && pytest_args=(-m "not slow" "${pytest_args[@]}")

PYTHON=${PYTHON:-python3}
export PYTHON
default_version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

started=$(date +%s)
VENV=.venv bash scripts/setup.sh
echo "test: .venv ready in $(($(date +%s) - started)) s" >&2
.venv/bin/ruff check src tests bench examples
.venv/bin/ruff format --check src tests bench examples
.venv/bin/mypy

suite() {  # suite VENV LABEL [PYTEST ARGS]: run pytest with that venv's interpreter, report how it went
  local venv=$1 label=$2 started status
  shift 2
  started=$(date +%s)
  echo "test: the suite on $label" >&2
  status=0
  "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" "${pytest_args[@]}" || status=$?
  results+=("$label: $([ "$status" = 0 ] && echo passed || echo "FAILED (pytest exit $status)") in $(($(date +%s) - started)) s")
  return "$status"
}

results=()
failed=0
if [ "$all_pythons" = 0 ]; then
  suite .venv "CPython $default_version (.venv)" || failed=1
else
  mapfile -t pythons < <(bash scripts/pythons.sh)
  for line in "${pythons[@]}"; do
    read -r version python <<<"$line"
    venv=.venv
    if [ "$version" != "$default_version" ]; then
      venv=.venv-$version
      started=$(date +%s)
      if ! PYTHON=$python VENV=$venv bash scripts/setup.sh; then
        results+=("CPython $version ($venv): set-up FAILED")
        failed=1
        continue
      fi
      echo "test: $venv set up in $(($(date +%s) - started)) s" >&2
    fi
    if [ "$version" = "$default_version" ]; then
      suite "$venv" "CPython $version ($venv)" || failed=1
    elif [ "$fast" = 1 ]; then
      suite "$venv" "CPython $version ($venv)" || failed=1
    else
      suite "$venv" "CPython $version ($venv), without heavy tests" -m "not heavy" || failed=1
    fi
  done
fi
printf 'test: %s\n' "${results[@]}" >&2
exit "$failed"
