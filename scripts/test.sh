#!/usr/bin/env bash
# The project's test command: set up, then lint, type-check and run the test suite.
#
#     bash scripts/test.sh                  the whole suite but the heavy tests, on python3 (in .venv)
#     bash scripts/test.sh --fast           the inner loop: the tests not marked slow (a few minutes)
#     bash scripts/test.sh --heavy          also the heavy tests: long repetitions of a race (thousands
#                                           of pool tasks, 20 runs of `with Pool()`), about 8 minutes more
#     bash scripts/test.sh --all-pythons    what CI runs: every CPython that pyproject.toml claims and
#                                           this machine has, one venv each (see below)
#     bash scripts/test.sh ... -- ARGS      ARGS go to pytest (a file, -k EXPR, -x ...)
#
# --all-pythons runs the whole suite (heavy tests aside, unless --heavy) on python3's version and on
# the newest claimed version found, and the tests not marked slow on the others: CI must stay under
# 45 minutes, and the whole suite takes about 10 minutes per Python on a 2-core machine.
#
# ruff and mypy run once, in .venv. With --all-pythons, python3's version uses .venv and each other
# version .venv-3.N; a claimed version that is missing is reported in one line and skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

fast=0
heavy=0
all_pythons=0
pytest_args=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --fast) fast=1 ;;
    --all-pythons) all_pythons=1 ;;
    --heavy) heavy=1 ;;
    --) shift; pytest_args+=("$@"); break ;;
    *) pytest_args+=("$1") ;;
  esac
  shift
done
whole="not heavy"
[ "$heavy" = 1 ] && whole="slow or not slow"
[ "$fast" = 1 ] && whole="not slow"

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
  suite .venv "CPython $default_version (.venv)" -m "$whole" || failed=1
else
  mapfile -t pythons < <(bash scripts/pythons.sh)
  newest=$(printf '%s\n' "${pythons[@]}" | tail -n 1 | cut -d' ' -f1)
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
      suite "$venv" "CPython $version ($venv), -m '$whole'" -m "$whole" || failed=1
    elif [ "$version" = "$newest" ]; then
      newest_marks="not heavy"
      [ "$fast" = 1 ] && newest_marks="not slow"
      suite "$venv" "CPython $version ($venv), -m '$newest_marks'" -m "$newest_marks" || failed=1
    else
      suite "$venv" "CPython $version ($venv), -m 'not slow'" -m "not slow" || failed=1
    fi
  done
fi
printf 'test: %s\n' "${results[@]}" >&2
exit "$failed"
