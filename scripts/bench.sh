#!/usr/bin/env bash
# Benchmark the POS pipeline through its public API (tools/loadgen), on localhost.
#
#   scripts/bench.sh [--instances "1 2"] [--duration 60] [--warmup 5] [--mode closed|open]
#                    [--ceilings-duration 10] [--no-ceilings] [--no-build] [--sockets N]
#                    [--rss-every 15]
#                    [loadgen args...]
#
# For each instance count N in --instances (default "1"):
#   1. a fresh private stack (NATS JetStream, Redis, MongoDB replica set) on free ports in
#      .stack/bench/n<N> (xtask stack; installs what is missing, as ./x up does);
#   2. N instances of each service (ingress, processor, persister, fanout), release build,
#      on free ports; waits for every ingress and fanout /health;
#   3. `loadgen ceilings` (first N only: the raw JetStream / MongoDB rates of this machine);
#   4. `loadgen pipeline` against all ingress and fanout URLs, sampling the CPU time of
#      every process meanwhile, and its RSS every --rss-every seconds (memory over a
#      long run: first / last / max per process in the results);
#   5. everything stopped and the stack's data removed (also on Ctrl-C or failure).
# Results: tables on the terminal, one JSON object per run appended to
# .stack/bench/results-<UTC date-time>.jsonl; service logs stay in .stack/bench/logs-*.
#
# --sockets N: instead of step 4, one instance of each service and `loadgen sockets
# --sockets N --fanout-pid <fanout-0>` (N concurrent sockets on one fanout: its memory per
# socket and the delivery latency; the other arguments then go to `loadgen sockets`).
#
# Arguments not listed above go to `loadgen pipeline`, e.g. --concurrency 100,
# --rate 800 (with --mode open), --tenants 8, --dup-share 0.1. See `loadgen --help`.
#
# Environment:
#   JWT_SECRET   HS256 secret (default: scripts/up.sh's dev secret)
#   RUST_LOG     service log level (default warn: info writes a line per invoice and
#                service, ~2 MB per 15 s on ingress; no throughput difference measured)
#   POS_HEALTH_TIMEOUT  seconds to wait for /health (default 60)
#   POS_BIN_DIR  where the service and loadgen binaries are (default target/release)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BENCH_DIR="$ROOT/.stack/bench"
BIN_DIR="${POS_BIN_DIR:-$ROOT/target/release}"
HEALTH_TIMEOUT="${POS_HEALTH_TIMEOUT:-60}"
SERVICES=(ingress processor persister fanout)

INSTANCES="1"
DURATION=60
WARMUP=5
MODE=closed
CEIL_DURATION=10
CEILINGS=1
BUILD=1
SOCKETS=""
RSS_EVERY=15
PASS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --instances) INSTANCES="$2"; shift 2 ;;
    --instances=*) INSTANCES="${1#*=}"; shift ;;
    --duration) DURATION="$2"; shift 2 ;;
    --duration=*) DURATION="${1#*=}"; shift ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --warmup=*) WARMUP="${1#*=}"; shift ;;
    --mode) MODE="$2"; shift 2 ;;
    --mode=*) MODE="${1#*=}"; shift ;;
    --ceilings-duration) CEIL_DURATION="$2"; shift 2 ;;
    --ceilings-duration=*) CEIL_DURATION="${1#*=}"; shift ;;
    --no-ceilings) CEILINGS=0; shift ;;
    --no-build) BUILD=0; shift ;;
    --rss-every) RSS_EVERY="$2"; shift 2 ;;
    --rss-every=*) RSS_EVERY="${1#*=}"; shift ;;
    --sockets) SOCKETS="$2"; shift 2 ;;
    --sockets=*) SOCKETS="${1#*=}"; shift ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) PASS+=("$1"); shift ;;
  esac
done
for n in $INSTANCES; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench: bad instance count '$n' in --instances" >&2; exit 2; }
done
[[ "$RSS_EVERY" =~ ^[1-9][0-9]*$ ]] || { echo "bench: bad --rss-every '$RSS_EVERY' (whole seconds)" >&2; exit 2; }
for d in "$DURATION" "$WARMUP" "$CEIL_DURATION"; do
  [[ "$d" =~ ^[0-9]+(\.[0-9]+)?(ms|s|m|h)?$ ]] || { echo "bench: bad duration '$d' (e.g. 60, 60s, 2m)" >&2; exit 2; }
done
if [ -n "$SOCKETS" ]; then
  [[ "$SOCKETS" =~ ^[1-9][0-9]*$ ]] || { echo "bench: bad --sockets '$SOCKETS'" >&2; exit 2; }
  INSTANCES="1"
fi
[ -n "${INSTANCES// /}" ] || { echo "bench: --instances is empty" >&2; exit 2; }

export JWT_SECRET="${JWT_SECRET:-dev-secret-change-me-0123456789abcdef}"
export RUST_LOG="${RUST_LOG:-warn}"
export MONGODB_DB="${MONGODB_DB:-pos}"
# The benchmark measures the pipeline: a shop-sized rate limit would cap it at 500/s.
export RATE_LIMIT_TENANT="${RATE_LIMIT_TENANT:-0}" RATE_LIMIT_TERMINAL="${RATE_LIMIT_TERMINAL:-0}"

log() { printf 'bench: %s\n' "$*" >&2; }

# many sockets need many file descriptors, in fanout and loadgen alike (both inherit this)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RESULTS="$BENCH_DIR/results-$STAMP.jsonl"
LOGS="$BENCH_DIR/logs-$STAMP"
mkdir -p "$BENCH_DIR" "$LOGS"

proc_start() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }
# seconds in a loadgen duration: 15, 15s, 500ms, 2m
secs() { python3 -c '
import re, sys
m = re.fullmatch(r"([0-9.]+)(ms|s|m|h)?", sys.argv[1].strip())
n, unit = float(m.group(1)), m.group(2) or "s"
print(n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit])' "$1"; }
# user+system clock ticks a process has used so far (empty when it is gone)
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}'; }

free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# NATS_URL with the operator's credentials (the ceilings create streams of their own).
operator_url() {
  if [ -n "${NATS_PASSWORD_OPERATOR:-}" ]; then
    printf '%s' "${NATS_URL/nats:\/\//nats://operator:$NATS_PASSWORD_OPERATOR@}"
  else
    printf '%s' "$NATS_URL"
  fi
}

# NATS_USER / NATS_PASSWORD of service $1 (nats/nats-server.conf), from the passwords
# xtask stack exported in its env file; nothing for a server without them.
nats_login() {
  local v="NATS_PASSWORD_${1^^}"
  [ -z "${!v:-}" ] || printf 'NATS_USER=%s NATS_PASSWORD=%s' "$1" "${!v}"
}

NAMES=()   # running service instances of the current round, their pids and start times
PIDS=()
STARTS=()
STACK_DIR=""
stop_services() {
  local i deadline=$((SECONDS + 15))
  for i in "${!PIDS[@]}"; do
    # only our own child: same pid and same start time as when it was spawned
    [ "$(proc_start "${PIDS[$i]}")" = "${STARTS[$i]}" ] && kill -TERM "${PIDS[$i]}" 2>/dev/null || true
  done
  for i in "${!PIDS[@]}"; do
    while kill -0 "${PIDS[$i]}" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    if kill -0 "${PIDS[$i]}" 2>/dev/null && [ "$(proc_start "${PIDS[$i]}")" = "${STARTS[$i]}" ]; then
      log "${NAMES[$i]} (pid ${PIDS[$i]}) ignored SIGTERM; sending SIGKILL"
      kill -KILL "${PIDS[$i]}" 2>/dev/null || true
    fi
  done
  NAMES=(); PIDS=(); STARTS=()
}
stop_round() {
  if [ "${#PIDS[@]}" -gt 0 ]; then log "stopping services"; stop_services; fi
  if [ -n "$STACK_DIR" ]; then
    # keep the infrastructure logs next to the service logs, then drop the data
    for f in nats-0 redis mongod-0; do
      [ -f "$STACK_DIR/$f.log" ] && cp "$STACK_DIR/$f.log" "$LOGS/n$ROUND-$f.log" 2>/dev/null || true
    done
    "$BIN_DIR/xtask" stack down --dir "$STACK_DIR" --purge >/dev/null 2>&1 || true
    STACK_DIR=""
  fi
}
CLEANED=0
# shellcheck disable=SC2329  # (invoked by the EXIT trap)
cleanup() {
  local rc=$?
  [ "$CLEANED" = 1 ] && return 0
  CLEANED=1
  trap '' INT TERM
  stop_round
  [ -s "$RESULTS" ] && log "results: ${RESULTS#"$ROOT"/}   logs: ${LOGS#"$ROOT"/}"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo >&2; log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# ---------------------------------------------------------------- install + build
if [ "$BUILD" = 1 ]; then
  log "cargo build --release (services + loadgen + xtask)"
  cargo build --release -p ingress -p processor -p persister -p fanout -p loadgen -p xtask
fi
for b in "${SERVICES[@]}" loadgen xtask; do
  [ -x "$BIN_DIR/$b" ] || { log "missing $BIN_DIR/$b (build failed?)"; exit 1; }
done
"$BIN_DIR/xtask" install >/dev/null

GIT="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
git diff --quiet HEAD 2>/dev/null || GIT="$GIT+dirty"
CPU_MODEL="$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null || true)"
NCPU="$(nproc 2>/dev/null || echo 0)"
TICKS="$(getconf CLK_TCK 2>/dev/null || echo 100)"

# Writes one JSON line to $RESULTS: the loadgen result ($1, a file) plus context.
record() {  # result-file kind instances cpu-json health-json warnings-json consumers-json [rss-json]
  python3 - "$1" "$2" "$3" "$4" "$5" "$6" "$7" "${8:-}" "$GIT" "$NCPU" "$CPU_MODEL" "$STAMP" >>"$RESULTS" <<'EOF'
import json, sys, datetime
path, kind, n, cpu, health, warns, consumers, rss, git, ncpu, model, stamp = sys.argv[1:13]
line = [l for l in open(path).read().splitlines() if l.startswith("{")]
result = json.loads(line[-1]) if line else {"error": "loadgen printed no result"}
out = {"kind": kind, "instances": int(n), "at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "bench": stamp, "git": git, "machine": {"cpus": int(ncpu), "model": model}}
out.update(result)
out["kind"] = kind
if cpu: out["cpu_pct_of_one_core"] = json.loads(cpu)
if health: out["health_after"] = json.loads(health)
if warns: out["log_warnings"] = json.loads(warns)
if consumers: out["consumers_mid_run"] = json.loads(consumers)
if rss: out["rss_mib"] = json.loads(rss)
print(json.dumps(out))
EOF
}

# ---------------------------------------------------------------- rounds
ROUND=0
FIRST=1
for N in $INSTANCES; do
  ROUND="$N"
  log "================ $N instance(s) of each service ================"
  STACK_DIR="$BENCH_DIR/n$N"
  # a fresh stack each round
  "$BIN_DIR/xtask" stack down --dir "$STACK_DIR" --purge >/dev/null 2>&1 || true
  "$BIN_DIR/xtask" stack up --dir "$STACK_DIR" --free-ports >/dev/null
  # shellcheck disable=SC1091
  source "$STACK_DIR/env"

  read -r -a ports <<<"$(free_ports $((2 * N)))"
  INGRESS_URLS=() FANOUT_URLS=()
  for svc in "${SERVICES[@]}"; do
    for ((i = 0; i < N; i++)); do
      name="$svc-$i"
      case "$svc" in
        ingress) addr=(INGRESS_ADDR="127.0.0.1:${ports[$i]}"); INGRESS_URLS+=("http://127.0.0.1:${ports[$i]}") ;;
        fanout) addr=(FANOUT_ADDR="127.0.0.1:${ports[$((N + i))]}"); FANOUT_URLS+=("http://127.0.0.1:${ports[$((N + i))]}") ;;
        *) addr=(HEALTH_ADDR="127.0.0.1:0") ;;
      esac
      env NATS_URL="$NATS_URL" REDIS_URL="$REDIS_URL" MONGODB_URI="$MONGODB_URI" MONGODB_DB="$MONGODB_DB" \
        JWT_SECRET="$JWT_SECRET" RUST_LOG="$RUST_LOG" "${addr[@]}" $(nats_login "$svc") \
        setsid "$BIN_DIR/$svc" </dev/null >>"$LOGS/n$N-$name.log" 2>&1 &
      PIDS+=("$!"); NAMES+=("$name"); STARTS+=("$(proc_start "$!")")
    done
  done
  log "started ${NAMES[*]}"

  deadline=$((SECONDS + HEALTH_TIMEOUT))
  for url in "${INGRESS_URLS[@]}" "${FANOUT_URLS[@]}"; do
    until curl -fsS --max-time 2 "$url/health" >/dev/null 2>&1; do
      for i in "${!PIDS[@]}"; do
        if ! kill -0 "${PIDS[$i]}" 2>/dev/null; then
          log "${NAMES[$i]} exited during startup; last lines of its log:"
          tail -n 30 "$LOGS/n$N-${NAMES[$i]}.log" >&2 || true
          exit 1
        fi
      done
      [ "$SECONDS" -lt "$deadline" ] || { log "$url/health did not answer within ${HEALTH_TIMEOUT}s"; exit 1; }
      sleep 0.3
    done
  done
  log "all healthy: ingress ${INGRESS_URLS[*]}  fanout ${FANOUT_URLS[*]}"
  ING="$(IFS=,; echo "${INGRESS_URLS[*]}")"
  FAN="$(IFS=,; echo "${FANOUT_URLS[*]}")"

  if [ "$CEILINGS" = 1 ] && [ "$FIRST" = 1 ]; then
    log "loadgen ceilings (${CEIL_DURATION}s per measurement, 5 measurements)"
    "$BIN_DIR/loadgen" ceilings --nats "$(operator_url)" --mongo "$MONGODB_URI" \
      --duration "$CEIL_DURATION" --json >"$LOGS/n$N-ceilings.json" || log "loadgen ceilings failed"
    record "$LOGS/n$N-ceilings.json" ceilings "$N" "" "" "" ""
  fi
  FIRST=0

  if [ -n "$SOCKETS" ]; then
    FANOUT_PID=""
    for i in "${!NAMES[@]}"; do [ "${NAMES[$i]}" = fanout-0 ] && FANOUT_PID="${PIDS[$i]}"; done
    log "loadgen sockets: --sockets $SOCKETS on ${FANOUT_URLS[0]} (fanout pid $FANOUT_PID, open files limit $(ulimit -n)) ${PASS[*]:-}"
    set +e
    "$BIN_DIR/loadgen" sockets --ingress "${INGRESS_URLS[0]}" --fanout "${FANOUT_URLS[0]}" \
      --secret "$JWT_SECRET" --sockets "$SOCKETS" --fanout-pid "$FANOUT_PID" --json "${PASS[@]}" \
      >"$LOGS/n$N-sockets.json"
    rc=$?
    set -e
    [ "$rc" = 0 ] || log "loadgen sockets exited with status $rc"
    record "$LOGS/n$N-sockets.json" sockets "$N" "" "" "" ""
    stop_round
    continue
  fi

  # infrastructure pids (started by xtask stack in this round) join the CPU sampling
  CPU_NAMES=("${NAMES[@]}") CPU_PIDS=("${PIDS[@]}")
  for f in nats-0 redis mongod-0; do
    if [ -f "$STACK_DIR/$f.pid" ]; then CPU_NAMES+=("$f"); CPU_PIDS+=("$(cat "$STACK_DIR/$f.pid")"); fi
  done
  # Observer, in the background: CPU time of every process over the measured window
  # (warmup excluded), and halfway through it who is busy (top) and how far behind each
  # durable consumer is (NATS monitoring): the evidence for a bottleneck.
  rm -f "$LOGS/n$N-top.txt" "$LOGS/n$N-consumers.json" "$LOGS/n$N-cpu.json"
  (
    set +e +o pipefail   # best effort: a closed pipe (head) must not end the observer
    sleep "$(secs "$WARMUP")"
    ticks_a=(); for p in "${CPU_PIDS[@]}"; do ticks_a+=("$(cpu_ticks "$p")"); done
    ta="$(date +%s.%N)"
    half="$(python3 -c 'import sys; print(max(float(sys.argv[1]) / 2 - 0.75, 0))' "$(secs "$DURATION")")"
    sleep "$half"
    # (top's first frame averages since boot; the second one covers the last second)
    if command -v top >/dev/null 2>&1; then
      top -b -n2 -d1 -w 200 2>/dev/null | awk '/^top -/ {n++} n == 2' | head -n 25 >"$LOGS/n$N-top.txt"
    fi
    if [ -n "${POS_NATS_MONITOR_URL:-}" ]; then
      curl -fsS --max-time 2 "$POS_NATS_MONITOR_URL/jsz?consumers=true&config=true" 2>/dev/null | python3 -c '
import json, sys
out = {}
for a in json.load(sys.stdin).get("account_details", []):
    for s in a.get("stream_detail", []):
        for c in s.get("consumer_detail") or []:
            if c.get("config", {}).get("durable_name"):
                out[s["name"] + "/" + c["name"]] = {"pending": c["num_pending"], "ack_pending": c["num_ack_pending"], "redelivered": c["num_redelivered"]}
print(json.dumps(out))' >"$LOGS/n$N-consumers.json" 2>/dev/null || true
    fi
    sleep "$half"
    tb="$(date +%s.%N)"
    for i in "${!CPU_PIDS[@]}"; do
      printf '%s %s %s\n' "${CPU_NAMES[$i]}" "${ticks_a[$i]:-}" "$(cpu_ticks "${CPU_PIDS[$i]}")"
    done | python3 -c '
import json, sys
wall, ticks = float(sys.argv[1]) - float(sys.argv[2]), float(sys.argv[3])
out = {}
for line in sys.stdin:
    parts = line.split()
    if len(parts) == 3:
        out[parts[0]] = round(100 * (int(parts[2]) - int(parts[1])) / ticks / wall, 1)
print(json.dumps(out))' "$tb" "$ta" "$TICKS" >"$LOGS/n$N-cpu.json"
  ) &
  OBSERVER=$!
  # Memory, in the background: RSS of every process every $RSS_EVERY s while loadgen runs.
  rm -f "$LOGS/n$N-rss.txt"
  (
    set +e +o pipefail
    start=$SECONDS
    while :; do
      line="t=$((SECONDS - start))s"
      for i in "${!CPU_PIDS[@]}"; do
        kb="$(awk '/^VmRSS:/ {print $2}' "/proc/${CPU_PIDS[$i]}/status" 2>/dev/null)"
        [ -n "$kb" ] && line="$line ${CPU_NAMES[$i]}=$((kb / 1024))"
      done
      echo "$line" >>"$LOGS/n$N-rss.txt"
      sleep "$RSS_EVERY"
    done
  ) &
  RSS_SAMPLER=$!

  log "loadgen pipeline: --mode $MODE --duration $DURATION --warmup $WARMUP ${PASS[*]:-}"
  set +e
  "$BIN_DIR/loadgen" pipeline --ingress "$ING" --fanout "$FAN" --secret "$JWT_SECRET" \
    --mode "$MODE" --duration "$DURATION" --warmup "$WARMUP" --json "${PASS[@]}" \
    >"$LOGS/n$N-pipeline.json"
  rc=$?
  set -e
  wait "$OBSERVER" 2>/dev/null || true
  kill "$RSS_SAMPLER" 2>/dev/null || true
  wait "$RSS_SAMPLER" 2>/dev/null || true
  rss_json="$(python3 -c '
import json, sys
rows = [dict(kv.split("=") for kv in l.split()[1:]) for l in open(sys.argv[1]) if l.strip()]
out = {}
for name in (rows[0] if rows else {}):
    v = [int(r[name]) for r in rows if name in r]
    out[name] = {"first": v[0], "last": v[-1], "max": max(v), "samples": len(v)}
print(json.dumps(out))' "$LOGS/n$N-rss.txt" 2>/dev/null || true)"
  cpu_json="$(cat "$LOGS/n$N-cpu.json" 2>/dev/null || true)"
  health="$(curl -fsS --max-time 2 "${INGRESS_URLS[0]}/health" 2>/dev/null || true)"
  warns="$(
    for n in "${NAMES[@]}"; do
      printf '%s %s\n' "$n" "$(grep -cE 'WARN|ERROR' "$LOGS/n$N-$n.log" 2>/dev/null || true)"
    done | python3 -c '
import json, sys
out = {}
for line in sys.stdin:
    p = line.split()
    if p:
        out[p[0]] = int(p[1]) if len(p) > 1 and p[1].isdigit() else 0
print(json.dumps(out))'
  )"
  [ "$rc" = 0 ] || log "loadgen pipeline exited with status $rc"
  consumers="$(cat "$LOGS/n$N-consumers.json" 2>/dev/null || true)"
  record "$LOGS/n$N-pipeline.json" pipeline "$N" "$cpu_json" "$health" "$warns" "$consumers" "$rss_json"
  log "CPU during the run (% of one core; $NCPU cores): $cpu_json"
  log "RSS in MiB (first / last / max, every ${RSS_EVERY}s; all samples in $LOGS/n$N-rss.txt): $rss_json"
  [ -n "$consumers" ] && log "durable consumers mid-run (pending = not yet delivered): $consumers"
  [ -f "$LOGS/n$N-top.txt" ] && { log "top, mid-run:"; sed -n '1,20p' "$LOGS/n$N-top.txt" >&2; }

  stop_round
done

# ---------------------------------------------------------------- summary
python3 - "$RESULTS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    if r["kind"] == "sockets":
        d = r.get("delivery_ms", {})
        print("\nsockets: %s open / %s failed on one fanout; %s KiB per socket; delivery p50 %s p99 %s ms; %s of %s COMPLETED frames missing" % (
            r.get("sockets_open"), r.get("sockets_failed"), r.get("kib_per_socket"), d.get("p50"), d.get("p99"),
            r.get("missing"), r.get("expected_completed_frames")))
for r in rows:
    if r["kind"] == "ceilings":
        print("\nceilings (this machine, %s cores):" % r["machine"]["cpus"])
        for k in ("jetstream_publish_pipelined", "jetstream_publish_sync", "mongo_insert_one", "mongo_insert_many_100"):
            if k in r:
                print("  %-30s %10.0f/s   p50 %.2f ms  p99 %.2f ms" % (k, r[k]["per_s"], r[k]["latency_ms"]["p50"], r[k]["latency_ms"]["p99"]))
pipes = [r for r in rows if r["kind"] == "pipeline"]
if pipes:
    print("\n%-3s %-6s %10s %10s %17s %17s %6s %5s %4s %10s" % (
        "N", "mode", "accepted/s", "complet/s", "accept p50/p99 ms", "e2e p50/p99 ms", "errors", "never", "dups", "SoR lag s"))
    for r in pipes:
        a, e = r.get("accept_ms", {}), r.get("e2e_ms", {})
        lag = (r.get("persisted") or {}).get("caught_up_s")
        print("%-3s %-6s %10.1f %10.1f %8.1f/%-8.1f %8.1f/%-8.1f %6s %5s %4s %10s" % (
            r["instances"], r.get("mode", "?"), r.get("accepted_per_s", 0), r.get("completed_per_s", 0),
            a.get("p50", 0), a.get("p99", 0), e.get("p50", 0), e.get("p99", 0),
            r.get("errors_total", "?"), r.get("never_completed", "?"), r.get("duplicates_seen", "?"),
            "n/a" if lag is None else "%.1f" % lag))
    print("(SoR lag: seconds after the load stopped until GET /invoices?state=COMPLETED listed every completed invoice)")
print()
EOF
