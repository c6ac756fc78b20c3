# Task menu for the POS backend. Run through ./x (it installs `just` when missing):
#   ./x up      whole system on localhost (infra + 4 services), Ctrl-C stops it
#   ./x test    whole test suite against a private throwaway stack
# `./x` alone lists the recipes.

set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments

dev_stack := ".stack/dev"

# list the recipes
default:
    @"{{just_executable()}}" --justfile "{{justfile()}}" --list --unsorted

# bring up NATS, Redis, MongoDB, the services and the console on localhost (--cluster: 3 NATS
# nodes with R3 streams and a 3-member replica set); Ctrl-C stops all
up *args:
    cargo run -q -p xtask -- up "$@"

# run the whole test suite against a private stack on free ports (args go to cargo test)
test *args:
    cargo run -q -p xtask -- test "$@"

# the node-loss drill: 3 NATS nodes (R3) + 3 mongod, release services, loadgen at --rate
# (default 300/s); kill -9 the stream leader, restart it, rolling restart; exit 1 unless
# 0 lost, 0 duplicated, 0 stuck, no WebSocket gap (xtask cluster chaos --help)
chaos *args:
    cargo build --release -p ingress -p processor -p persister -p fanout -p loadgen -p xtask
    target/release/xtask install
    target/release/xtask cluster chaos "$@"

# a 3-node NATS cluster + 3-member MongoDB replica set alone, in .stack/cluster:
# ./x cluster up|down|status|kill N|stop N|start N (xtask cluster --help)
cluster *args:
    cargo run -q -p xtask -- install
    cargo run -q -p xtask -- cluster "$@"

# install nats-server, redis-server and mongod 6.0 (cached) if missing
stack-install:
    cargo run -q -p xtask -- install

# start only the dev infrastructure on default ports (4222/6379/27017) in .stack/dev
stack-up:
    cargo run -q -p xtask -- install
    cargo run -q -p xtask -- stack up --dir {{dev_stack}}

# stop the dev infrastructure started by stack-up (or left over by up)
stack-down:
    cargo run -q -p xtask -- stack down --dir {{dev_stack}}

# show what runs in .stack/dev
stack-status:
    cargo run -q -p xtask -- stack status --dir {{dev_stack}}

# write nats/ to the running dev NATS (.stack/dev): create what is missing, update what
# differs, print each change. Services never rewrite an existing stream or consumer.
nats-apply:
    @[ -f {{dev_stack}}/env ] || { echo "no dev stack in {{dev_stack}}: start one with ./x up or ./x stack-up"; exit 1; }
    cargo build -q -p nats-apply
    set -a; source {{dev_stack}}/env; set +a; \
      NATS_USER=operator NATS_PASSWORD="$NATS_PASSWORD_OPERATOR" target/debug/nats-apply

# print a dev JWT (HS256); e.g. ./x jwt --sub T2 --role manager --ttl 600
jwt *args:
    cargo run -q -p xtask -- jwt "$@"

# benchmark through the public API on a private stack, e.g. ./x bench --instances "1 2" --duration 60 (--help)
bench *args:
    cargo run -q -p xtask -- bench "$@"

# format all Rust code
fmt:
    cargo fmt --all

# check formatting and clippy with warnings as errors (what CI would reject)
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
