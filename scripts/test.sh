#!/usr/bin/env bash
# The project's test command: set up, then lint, type-check and run the test suite.
#
#     bash scripts/test.sh                  the whole suite but the heavy tests, on python3 (in .venv)
#     bash scripts/test.sh --fast           the inner loop: the tests not marked slow (about a minute)
#     bash scripts/test.sh --heavy          also the heavy tests: long repetitions of a race (thousands
#                                           of pool tasks, 20 runs of `with Pool()`), a few minutes more
#     bash scripts/test.sh --all-pythons    what CI runs: every CPython that pyproject.toml claims and
#                                           this machine has, one venv each (see below)
#     bash scripts/test.sh ... --jobs N     with --all-pythons: N suites at once (default: one more
#                                           than the CPUs)
#     bash scripts/test.sh ... -- ARGS      ARGS go to pytest (a file, -k EXPR, -x ...)
#
# --all-pythons runs the whole suite, heavy tests included, on python3's version, the whole suite but
# the heavy tests on the newest claimed version found, and the tests not marked slow on the others
# (with --fast, the tests not marked slow everywhere). The virtualenvs are set up at once, and the
# suites run side by side in --jobs lanes: a suite spends most of its time waiting on the processes
# and servers it starts (all of CI used 0.7 of a CPU on average on a 2-CPU machine). Each suite writes
# to its own log, printed whole when the suite ends, with pytest's --durations and the costliest tests
# (tests/costs.py).
#
# ruff and mypy run once, in .venv. With --all-pythons, python3's version uses .venv and each other
# version .venv-3.N; a claimed version that is missing is reported in one line and skipped.
#
# A test that is not marked slow and costs more than tests/costs.py's CPU limit fails the suite.
set -euo pipefail
cd "$(dirname "$0")/.."

fast=0
heavy=0
all_pythons=0
jobs=$(($(nproc 2>/dev/null || echo 2) + 1))
pytest_args=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --fast) fast=1 ;;
    --all-pythons) all_pythons=1 ;;
    --heavy) heavy=1 ;;
    --jobs) shift; jobs=$1 ;;
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

lint() {  # each of the three runs, whatever the others say
  local status=0
  .venv/bin/ruff check src tests bench examples || status=1
  .venv/bin/ruff format --check src tests bench examples || status=1
  .venv/bin/mypy || status=1
  return "$status"
}

if [ "$all_pythons" = 0 ]; then
  VENV=.venv bash scripts/setup.sh
  echo "test: .venv ready in $(($(date +%s) - started)) s" >&2
  lint
  status=0
  .venv/bin/python -m pytest -q -p no:cacheprovider -m "$whole" "${pytest_args[@]}" || status=$?
  echo "test: CPython $default_version (.venv), -m '$whole': $([ "$status" = 0 ] && echo passed ||
    echo "FAILED (pytest exit $status)") in $(($(date +%s) - started)) s" >&2
  exit "$status"
fi

# --all-pythons

logs=$(mktemp -d "${TMPDIR:-/tmp}/logfire-run-test.XXXXXX")
echo "test: logs in $logs" >&2
elapsed() { echo "$(($(date +%s) - $1)) s"; }

show() {  # show FILE: print a log whole, never interleaved with another suite's
  {
    flock 9
    cat "$1"
  } 9>"$logs/print.lock"
}

# Every virtualenv at once (pip mostly downloads), and the system packages beside them.
setup() {  # setup VERSION PYTHON VENV: set up one venv; its log and status go to $logs
  local version=$1 python=$2 venv=$3 t0 status=0
  t0=$(date +%s)
  PYTHON=$python VENV=$venv bash scripts/setup.sh --venv >"$logs/setup-$version.log" 2>&1 || status=$?
  echo "test: $venv (CPython $version) set-up $([ "$status" = 0 ] && echo done ||
    echo "FAILED (exit $status)") in $(elapsed "$t0")" >>"$logs/setup-$version.log"
  show "$logs/setup-$version.log" >&2
  echo "$status" >"$logs/setup-$version.status"
}
wait_setup() {  # wait_setup VERSION: the exit status of that version's set-up, once it is done
  until [ -e "$logs/setup-$1.status" ]; do sleep 1; done
  return "$(cat "$logs/setup-$1.status")"
}

mapfile -t pythons < <(bash scripts/pythons.sh)
newest=$(printf '%s\n' "${pythons[@]}" | tail -n 1 | cut -d' ' -f1)
bash scripts/setup.sh --system &
system_setup=$!
suites=()  # "VERSION VENV MARKS"
for line in "${pythons[@]}"; do
  read -r version python <<<"$line"
  venv=.venv-$version
  [ "$version" = "$default_version" ] && venv=.venv
  setup "$version" "$python" "$venv" &
  if [ "$fast" = 1 ]; then
    marks="not slow"
  elif [ "$version" = "$default_version" ]; then
    marks="slow or not slow"
  elif [ "$version" = "$newest" ]; then
    marks="not heavy"
  else
    marks="not slow"
  fi
  suites+=("$version $venv $marks")
done
# ruff and mypy run in .venv, python3's, even when python3 is not a claimed version.
if [[ ! " ${pythons[*]} " =~ " $default_version " ]]; then
  setup "$default_version" "$PYTHON" .venv &
fi

failed=0
wait "$system_setup" || failed=1
if wait_setup "$default_version"; then
  if ! { echo "test: ruff check, ruff format --check, mypy"; lint; } >"$logs/lint.log" 2>&1; then
    echo "test: ruff or mypy FAILED" >>"$logs/lint.log"
    failed=1
  fi
  show "$logs/lint.log" >&2
else
  failed=1
fi

suite() {  # suite VERSION VENV MARKS: one suite, its output to its log, printed when it ends
  local version=$1 venv=$2 marks=$3 t0 status=0 label log
  label="CPython $version ($venv), -m '$marks'"
  log="$logs/suite-$version.log"
  if ! wait_setup "$version"; then
    echo "$label: not run, set-up FAILED" >"$logs/suite-$version.result"
    return 1
  fi
  t0=$(date +%s)
  echo "test: the suite on $label started" >&2
  # --basetemp: each suite's own temporary folders, whatever runs beside it.
  "$venv/bin/python" -m pytest -q -p no:cacheprovider -m "$marks" --durations=25 --costs=15 \
    --basetemp="$logs/tmp-$version" "${pytest_args[@]}" >"$log" 2>&1 || status=$?
  echo "$label: $([ "$status" = 0 ] && echo passed || echo "FAILED (pytest exit $status)") in $(elapsed "$t0")" \
    >"$logs/suite-$version.result"
  {
    echo "======== the suite on $label ========"
    cat "$log"
    echo "test: $(cat "$logs/suite-$version.result")"
  } >"$log.shown"
  show "$log.shown"
  rm -rf "$logs/tmp-$version"
  return "$status"
}

# The suites in $jobs lanes, each lane one suite after another: the longest suite goes first, to the
# lane with the least work so far (a weight per kind of suite: roughly its minutes alone).
weight() { case "$1" in "slow or not slow") echo 12 ;; "not heavy") echo 9 ;; *) echo 2 ;; esac; }
lane_work=()
lane_suites=()
for ((lane = 0; lane < jobs; lane++)); do
  lane_work[lane]=0
  lane_suites[lane]=""
done
for kind in "slow or not slow" "not heavy" "not slow"; do
  for entry in "${suites[@]}"; do
    read -r version venv marks <<<"$entry"
    [ "$marks" = "$kind" ] || continue
    least=0
    for ((lane = 1; lane < jobs; lane++)); do
      [ "${lane_work[lane]}" -lt "${lane_work[least]}" ] && least=$lane
    done
    lane_work[least]=$((lane_work[least] + $(weight "$marks")))
    lane_suites[least]+="$entry"$'\n'
  done
done

run_lane() {  # run_lane ENTRIES: the suites of one lane (one per line), one after another
  local entries status=0 entry version venv marks
  mapfile -t entries <<<"$1"
  for entry in "${entries[@]}"; do
    [ -n "$entry" ] || continue
    read -r version venv marks <<<"$entry"
    suite "$version" "$venv" "$marks" || status=1
  done
  return "$status"
}
lanes=()
for ((lane = 0; lane < jobs; lane++)); do
  [ -n "${lane_suites[lane]}" ] || continue
  run_lane "${lane_suites[lane]}" &
  lanes+=($!)
done
for pid in "${lanes[@]}"; do
  wait "$pid" || failed=1
done
wait  # the set-ups (each suite waited for its own already)

for entry in "${suites[@]}"; do
  read -r version _ <<<"$entry"
  echo "test: $(cat "$logs/suite-$version.result" 2>/dev/null || echo "CPython $version: no result")" >&2
done
if [ "$failed" = 0 ]; then
  echo "test: --all-pythons passed in $(elapsed "$started")" >&2
  rm -rf "$logs"
else
  echo "test: --all-pythons FAILED in $(elapsed "$started") (logs in $logs)" >&2
fi
exit "$failed"
