#!/usr/bin/env bash
# Side-by-side benchmark: Remora next to Envoy, nginx and HAProxy, with the shared rig in
# ../shared/bench (see its README). Builds Remora in release mode, runs the rig's one-time setup
# (idempotent), then the rig itself with Remora serving the same Envoy bootstrap Envoy uses.
#
#   tests/bench/run.sh                        # full run (~4 min)
#   PROXIES="direct envoy remora" tests/bench/run.sh
#   DUR=4 RTT_DUR=2 LAT_DUR=12 H2_DUR=3 tests/bench/run.sh   # quick smoke
#
# Quote ratios from one run (vs direct / hello / envoy), not absolute numbers: the box is shared.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
rig=${BENCH_RIG:-$repo/../shared/bench}
[ -x "$rig/run.sh" ] || { echo "benchmark rig not found at $rig (set BENCH_RIG)" >&2; exit 2; }

(cd "$repo" && cargo build --release --quiet)
# Reuse the test suite's Envoy if present, so the rig does not install a second copy.
if [ -z "${ENVOY_BIN:-}" ] && [ -x "$repo/.venv/bin/envoy" ]; then export ENVOY_BIN="$repo/.venv/bin/envoy"; fi
bash "$rig/setup.sh"

export REMORA_CMD="$repo/target/release/remora -c $rig/envoy-bootstrap.yaml --concurrency 1 -l warning"
export REMORA_PORT=27004
exec bash "$rig/run.sh"
