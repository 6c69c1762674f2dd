#!/usr/bin/env bash
# Side-by-side run: Prometheus federation vs vmagent + VictoriaMetrics vs strata
# (NDJSON, and OpenTelemetry SDK over OTLP), same workload, one run. Not part
# of CI. See docs/PERFORMANCE.md.
#
#   bench/compare.sh [--minutes N] [--services K] [--rate R] [--keep]
#
#   --minutes N   full minutes of load scored for p99 (default 4; the whole run
#                 takes about N + 3 minutes; 1 is a smoke test of the script)
#   --services K  services per region (default 20)
#   --rate R      requests/s per region (default 2000)
#   --keep        keep the work directory (configs, logs, data) for inspection
#
# STRATA_BIN=/path/to/strata uses that binary instead of building this tree
# with `cargo build --release` (STRATA_REV=<commit> records where it came from).
#
# The load generators play the instrumented applications with the real client
# libraries (prometheus_client, the OpenTelemetry SDK and its OTLP/gRPC
# exporter), pinned in bench/compare/requirements.txt and installed from PyPI
# into a virtualenv at target/bench-venv (made when missing or when the pins
# change; BENCH_VENV=/path puts it elsewhere).
#
# Writes bench/results/compare-<UTC time>.json and docs/perf-compare.svg and
# prints a summary table. Everything listens on 127.0.0.1 only; the load stops
# by itself and every process started is stopped before the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for bin in prometheus victoria-metrics vmagent python3; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done
if ((${#missing[@]})); then
  echo "missing: ${missing[*]}" >&2
  case " ${missing[*]} " in
    *" prometheus "*|*" victoria-metrics "*|*" vmagent "*)
      echo "install them with: sudo apt-get update && sudo apt-get install -y prometheus victoria-metrics" >&2
      echo "(Debian 12 ships Prometheus 2.42 and VictoriaMetrics 1.79 with vmagent)" >&2 ;;
  esac
  exit 1
fi
[[ -n "${STRATA_BIN:-}" ]] || command -v cargo >/dev/null 2>&1 || {
  echo "cargo is needed to build strata (or set STRATA_BIN)" >&2; exit 1; }
python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' || {
  echo "python3 >= 3.9 is needed" >&2; exit 1; }

# The Python clients, in their own virtualenv.
venv=${BENCH_VENV:-target/bench-venv}
reqs=bench/compare/requirements.txt
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv" || {
    rm -rf "$venv"
    echo "could not make a virtualenv at $venv; on Debian/Ubuntu: sudo apt-get install python3-venv" >&2
    exit 1; }
fi
if ! cmp -s "$reqs" "$venv/.bench-requirements"; then
  echo "installing the Python clients of $reqs into $venv (from PyPI)" >&2
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs" || {
    echo "installing $reqs into $venv failed: pip's message above says why (is PyPI reachable?" \
         "a virtualenv without pip: sudo apt-get install python3-venv, then rm -r $venv)" >&2
    exit 1; }
  cp "$reqs" "$venv/.bench-requirements"
fi
# The Debian package enables a prometheus service; a running one is harmless
# (this script uses its own ports) but costs CPU on the same machine.
if pgrep -x prometheus >/dev/null 2>&1 || pgrep -x victoria-metrics >/dev/null 2>&1; then
  echo "note: a prometheus/victoria-metrics process is already running on this machine;" \
       "it competes for CPU with the measured ones" >&2
fi

if [[ -n "${STRATA_BIN:-}" ]]; then
  [[ -x "$STRATA_BIN" ]] || { echo "STRATA_BIN=$STRATA_BIN is not executable" >&2; exit 1; }
else
  cargo build --release --quiet --bin strata
  STRATA_BIN=target/release/strata
  if git rev-parse --git-dir >/dev/null 2>&1; then
    STRATA_REV=$(git rev-parse --short HEAD)
    git diff --quiet HEAD -- Cargo.toml Cargo.lock crates src proto 2>/dev/null || STRATA_REV+="+uncommitted"
    export STRATA_REV
  fi
fi
exec "$venv/bin/python" bench/compare/compare.py --strata "$STRATA_BIN" "$@"
