#!/usr/bin/env bash
# Run the whole test suite against real servers: a private NATS JetStream + Redis +
# MongoDB replica set on free loopback ports in a fresh temp dir, torn down afterwards
# (also on failure and Ctrl-C). Extra arguments go to `cargo test` (e.g. -- --nocapture).
#
#   scripts/test.sh [cargo test args...]
#
# The tests get NATS_URL, REDIS_URL, MONGODB_URI, NATS_PASSWORD_<USER>, SCHEMATHESIS,
# POS_CHROMIUM_BIN (the console's browser test) and POS_NATS_SERVER_BIN,
# POS_REDIS_SERVER_BIN, POS_MONGOD_BIN (to start more private servers themselves) from the
# environment, and find the service binaries in target/debug.
# POS_KEEP_STACK=1 leaves the temp dir (data + logs) in place after the run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

"$ROOT/scripts/stack.sh" install --browser

# schemathesis (PyPI, pinned) in a venv of its own in the cache: tests/schema.rs runs it
# against the OpenAPI document the ingress serves.
CACHE="${POS_CACHE_DIR:-$HOME/.cache/pos-backend}"
ST_SPEC="${POS_SCHEMATHESIS_SPEC:-schemathesis==4.32.5}"
ST_VENV="$CACHE/schemathesis-${ST_SPEC#*==}"
if ! "$ST_VENV/bin/schemathesis" --version >/dev/null 2>&1; then
  echo "test: installing $ST_SPEC into $ST_VENV" >&2
  rm -rf "$ST_VENV"
  python3 -m venv "$ST_VENV"
  "$ST_VENV/bin/pip" install --quiet --disable-pip-version-check "$ST_SPEC"
fi
export SCHEMATHESIS="$ST_VENV/bin/schemathesis"

# Never run against a developer's stack: ignore URLs from the caller's environment.
unset NATS_URL REDIS_URL MONGODB_URI

tmp="$(mktemp -d "${TMPDIR:-/tmp}/pos-test.XXXXXX")"

teardown() {
  local rc=$?
  trap '' INT TERM
  if [ "$rc" = 130 ] || [ "$rc" = 143 ]; then
    echo "test: interrupted" >&2
  elif [ "$rc" != 0 ]; then
    echo "test: FAILED (exit $rc); tails of the stack's logs in $tmp:" >&2
    for f in "$tmp"/*.log; do
      [ -f "$f" ] || continue
      echo "----- $f" >&2
      tail -n 25 "$f" >&2 || true
    done
    echo "-----" >&2
  fi
  "$ROOT/scripts/stack.sh" down --dir "$tmp" >&2 || true
  if [ "${POS_KEEP_STACK:-0}" = 1 ]; then
    echo "test: kept $tmp" >&2
  else
    rm -rf "$tmp"
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$ROOT/scripts/stack.sh" up --dir "$tmp" --free-ports
# shellcheck disable=SC1091
source "$tmp/env"

cargo build --workspace --all-targets
cargo test --workspace --all-targets --no-fail-fast "$@"
# The terminal soak (8 000 invoices through faults) runs alone: beside the others its
# load on a 2-core machine starves their timing. Only in a full run (no filter given).
if [ $# -eq 0 ]; then
  cargo test -p integration-tests --test integration -- --ignored soak
fi
