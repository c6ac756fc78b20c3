#!/usr/bin/env bash
# Bring the whole POS backend up on localhost (no Docker) and keep it running until
# Ctrl-C: NATS JetStream + Redis + MongoDB (scripts/stack.sh, default ports, data and logs
# in .stack/dev), then the four services and the operator console built in release mode.
#
#   scripts/up.sh [--no-build] [--cluster]
#
# --cluster: a 3-node NATS JetStream cluster and a 3-member MongoDB replica set instead
# of one of each (`xtask cluster up`, data and logs in .stack/cluster), streams R3
# (NATS_REPLICAS=3), the services given every node as seeds. Stopped with the rest.
#
# Environment:
#   NATS_URL / REDIS_URL / MONGODB_URI   use these servers instead of starting local ones
#   JWT_SECRET        HS256 secret (default dev-secret-change-me-0123456789abcdef)
#   MONGODB_DB        database name (default pos)
#   RUST_LOG          (default info)
#   INGRESS_INSTANCES, PROCESSOR_INSTANCES, PERSISTER_INSTANCES, FANOUT_INSTANCES,
#   CONSOLE_INSTANCES
#                     instances per service (default 1). Instance i (0-based) of ingress
#                     listens on 0.0.0.0:3000+10*i, of fanout on 0.0.0.0:3001+10*i, of the
#                     console on 0.0.0.0:3004+10*i; the first
#                     processor/persister serve health on 127.0.0.1:3002/3003, the others on
#                     127.0.0.1:0.
#   POS_HEALTH_TIMEOUT  seconds to wait for /health (default 60)
#   POS_BIN_DIR       where the service binaries are (default target/release)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STACK_DIR="$ROOT/.stack/dev"
BIN_DIR="${POS_BIN_DIR:-$ROOT/target/release}"
HEALTH_TIMEOUT="${POS_HEALTH_TIMEOUT:-60}"
SERVICES=(ingress processor persister fanout console)

BUILD=1
CLUSTER=0
CLUSTER_DIR="$ROOT/.stack/cluster"
for arg in "$@"; do
  case "$arg" in
    --no-build) BUILD=0 ;;
    --cluster) CLUSTER=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "up: unknown argument $arg" >&2; exit 2 ;;
  esac
done

export JWT_SECRET="${JWT_SECRET:-dev-secret-change-me-0123456789abcdef}"
export MONGODB_DB="${MONGODB_DB:-pos}"
export RUST_LOG="${RUST_LOG:-info}"

log() { printf 'up: %s\n' "$*" >&2; }

proc_start() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }

# pid of a still-running service instance recorded in .stack/dev, or fail
service_pid() {
  local pid start
  pid="$(cat "$STACK_DIR/$1.pid" 2>/dev/null)" && start="$(cat "$STACK_DIR/$1.start" 2>/dev/null)" || return 1
  [ -n "$pid" ] && [ "$(proc_start "$pid")" = "$start" ] || return 1
  printf '%s\n' "$pid"
}

# NATS_USER / NATS_PASSWORD of service $1 (nats/nats-server.conf), from the passwords
# stack.sh exported in its env file; nothing for a server without them.
nats_login() {
  local v="NATS_PASSWORD_${1^^}"
  [ -z "${!v:-}" ] || printf 'NATS_USER=%s NATS_PASSWORD=%s' "$1" "${!v}"
}

# SIGTERM the given instances, wait up to 15 s, then SIGKILL
stop_instances() {
  local n pid pids=() deadline=$((SECONDS + 15))
  for n in "$@"; do
    if pid="$(service_pid "$n")"; then kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); fi
  done
  for pid in "${pids[@]}"; do
    while kill -0 "$pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid ignored SIGTERM; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for n in "$@"; do rm -f "$STACK_DIR/$n.pid" "$STACK_DIR/$n.start"; done
}

log_tail() {
  printf -- '----- last lines of %s -----\n' "$STACK_DIR/$1.log" >&2
  # only this run's part of the log (runs are separated by "===== " lines)
  { tac "$STACK_DIR/$1.log" | sed '/^===== /q' | tac | tail -n "${2:-40}"; } >&2 2>/dev/null || true
  printf -- '-----\n' >&2
}

INSTANCES=()   # instance names: ingress, ingress-1, ...
PIDS=()
CLEANED=0
# shellcheck disable=SC2329  # (invoked by the EXIT trap)
cleanup() {
  local rc=$?
  [ "$CLEANED" = 1 ] && return 0
  CLEANED=1
  trap '' INT TERM
  if [ "${#INSTANCES[@]}" -gt 0 ]; then
    log "stopping services: ${INSTANCES[*]}"
    stop_instances "${INSTANCES[@]}"
  fi
  log "stopping the stack in $STACK_DIR"
  "$ROOT/scripts/stack.sh" down --dir "$STACK_DIR" || true
  if [ "$CLUSTER" = 1 ] && [ -x "$BIN_DIR/xtask" ]; then
    "$BIN_DIR/xtask" cluster down --dir "$CLUSTER_DIR" || true
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo >&2; log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---------------------------------------------------------------- infrastructure
"$ROOT/scripts/stack.sh" install
if [ "$CLUSTER" = 1 ]; then
  if [ "$BUILD" = 1 ]; then cargo build --release -p xtask; fi
  "$BIN_DIR/xtask" cluster up --dir "$CLUSTER_DIR"
  # NATS_URL / MONGODB_URI (seed lists), REDIS_URL, NATS_REPLICAS=3, the NATS passwords:
  # stack.sh then starts none of its own servers.
  # shellcheck disable=SC1091
  source "$CLUSTER_DIR/env"
fi
"$ROOT/scripts/stack.sh" up --dir "$STACK_DIR"
# shellcheck disable=SC1091
source "$STACK_DIR/env"

# ---------------------------------------------------------------- build
if [ "$BUILD" = 1 ]; then
  log "cargo build --release (ingress processor persister fanout console xtask)"
  cargo build --release -p ingress -p processor -p persister -p fanout -p console -p xtask
fi
for svc in "${SERVICES[@]}" xtask; do
  [ -x "$BIN_DIR/$svc" ] || { log "missing $BIN_DIR/$svc (build failed?)"; exit 1; }
done

# ---------------------------------------------------------------- services
count() {
  local v; v="$(printf '%s_INSTANCES' "$1" | tr '[:lower:]' '[:upper:]')"
  v="${!v:-1}"
  [[ "$v" =~ ^[0-9]+$ ]] && [ "$v" -ge 1 ] || { log "bad instance count $v for $1"; exit 2; }
  printf '%s\n' "$v"
}

port_free() {
  python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

# stop instances left over by an earlier run that did not clean up
leftovers=()
for f in "$STACK_DIR"/*.pid; do
  [ -e "$f" ] || continue
  n="$(basename "$f" .pid)"
  case "$n" in ingress*|processor*|persister*|fanout*|console*) leftovers+=("$n") ;; esac
done
if [ "${#leftovers[@]}" -gt 0 ]; then
  log "stopping leftovers of an earlier run: ${leftovers[*]}"
  stop_instances "${leftovers[@]}"
fi

HEALTH_URLS=()   # "instance url"
start_instance() {  # service index
  local svc="$1" i="$2" name addr_env=() port
  name="$svc"; [ "$i" -gt 0 ] && name="$svc-$i"
  case "$svc" in
    ingress) port=$((3000 + 10 * i)); addr_env=("INGRESS_ADDR=0.0.0.0:$port")
             HEALTH_URLS+=("$name http://localhost:$port/health") ;;
    fanout) port=$((3001 + 10 * i)); addr_env=("FANOUT_ADDR=0.0.0.0:$port")
            HEALTH_URLS+=("$name http://localhost:$port/health") ;;
    processor) if [ "$i" = 0 ]; then port=3002; addr_env=("HEALTH_ADDR=127.0.0.1:3002")
               else port=""; addr_env=("HEALTH_ADDR=127.0.0.1:0"); fi ;;
    persister) if [ "$i" = 0 ]; then port=3003; addr_env=("HEALTH_ADDR=127.0.0.1:3003")
               else port=""; addr_env=("HEALTH_ADDR=127.0.0.1:0"); fi ;;
    console) port=$((3004 + 10 * i)); addr_env=("CONSOLE_ADDR=0.0.0.0:$port")
             HEALTH_URLS+=("$name http://localhost:$port/health") ;;
  esac
  if [ -n "$port" ] && ! port_free "$port"; then
    log "port $port (for $name) is already in use; is another scripts/up.sh running?"
    exit 1
  fi
  printf '\n===== %s: %s %s\n' "$(date -u +%FT%TZ)" "${addr_env[*]}" "$BIN_DIR/$svc" >>"$STACK_DIR/$name.log"
  env NATS_URL="$NATS_URL" REDIS_URL="$REDIS_URL" MONGODB_URI="$MONGODB_URI" MONGODB_DB="$MONGODB_DB" \
    JWT_SECRET="$JWT_SECRET" RUST_LOG="$RUST_LOG" "${addr_env[@]}" $(nats_login "$svc") \
    setsid "$BIN_DIR/$svc" </dev/null >>"$STACK_DIR/$name.log" 2>&1 &
  local pid=$!
  printf '%s\n' "$pid" >"$STACK_DIR/$name.pid"
  proc_start "$pid" >"$STACK_DIR/$name.start"
  INSTANCES+=("$name"); PIDS+=("$pid")
  log "started $name (pid $pid, ${addr_env[*]}, log .stack/dev/$name.log)"
}

for svc in "${SERVICES[@]}"; do
  n="$(count "$svc")"
  for ((i = 0; i < n; i++)); do start_instance "$svc" "$i"; done
done

# ---------------------------------------------------------------- health
deadline=$((SECONDS + HEALTH_TIMEOUT))
for entry in "${HEALTH_URLS[@]}"; do
  name="${entry%% *}"; url="${entry#* }"
  until curl -fsS --max-time 2 "$url" >/dev/null 2>&1; do
    pid="$(cat "$STACK_DIR/$name.pid")"
    if ! kill -0 "$pid" 2>/dev/null; then
      log "$name exited before $url answered"; log_tail "$name"; exit 1
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log "$name: $url did not answer within ${HEALTH_TIMEOUT}s"; log_tail "$name"; exit 1
    fi
    sleep 0.5
  done
  log "$name healthy ($url)"
done
for i in "${!PIDS[@]}"; do   # processor/persister have no URL we wait on: at least alive?
  if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
    log "${INSTANCES[$i]} exited during startup"; log_tail "${INSTANCES[$i]}"; exit 1
  fi
done

TOKEN="$("$BIN_DIR/xtask" jwt --secret "$JWT_SECRET")"
CONSOLE_TOKEN="$("$BIN_DIR/xtask" jwt --secret "$JWT_SECRET" --tenant ops --sub operator --role admin --ttl 43200)"
monitor=""; [ -n "${POS_NATS_MONITOR_URL:-}" ] && monitor="  (monitor $POS_NATS_MONITOR_URL)"
cat <<EOF

POS backend is up.
  REST       http://localhost:3000
  WebSocket  ws://localhost:3001/ws
  Console    http://localhost:3004/#token=$CONSOLE_TOKEN
             (an admin token of the operators' tenant ops, valid 12 h)
  NATS       $NATS_URL$monitor
  Redis      $REDIS_URL
  MongoDB    $MONGODB_URI  (database $MONGODB_DB)
  Logs       .stack/dev/*.log
  Instances  ${INSTANCES[*]}

Dev JWT (tenant demo, sub T1, role terminal, valid 24 h; more: ./x jwt --help):
  export TOKEN='$TOKEN'

Post an invoice:
  curl -sS -X POST localhost:3000/invoices -H "Authorization: Bearer \$TOKEN" -H 'Content-Type: application/json' -d '{"idempotencyKey":"T1-0001","terminalId":"T1","currency":"EUR","items":[{"sku":"COFFEE-L","name":"Coffee large","quantity":"2","unitPrice":"3.50","taxRate":"0.10"}],"payments":[{"method":"cash","amount":"10.00"}]}'

Press Ctrl-C to stop everything.
EOF

# ---------------------------------------------------------------- wait
# Returns when a service exits (that is a failure) or a signal arrives (the trap exits).
set +e
wait -n "${PIDS[@]}"
rc=$?
set -e
for i in "${!PIDS[@]}"; do
  if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
    log "${INSTANCES[$i]} exited unexpectedly (status $rc)"; log_tail "${INSTANCES[$i]}"
  fi
done
exit 1
