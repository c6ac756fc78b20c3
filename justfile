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

# bring up NATS, Redis, MongoDB and the four services on localhost; Ctrl-C stops all
up *args:
    scripts/up.sh "$@"

# run the whole test suite against a private stack on free ports (args go to cargo test)
test *args:
    scripts/test.sh "$@"

# install nats-server, redis-server and mongod 6.0 (cached) if missing
stack-install:
    scripts/stack.sh install

# start only the dev infrastructure on default ports (4222/6379/27017) in .stack/dev
stack-up:
    scripts/stack.sh install
    scripts/stack.sh up --dir {{dev_stack}}
    @echo "use it with: source {{dev_stack}}/env"

# stop the dev infrastructure started by stack-up (or left over by up)
stack-down:
    scripts/stack.sh down --dir {{dev_stack}}

# show what runs in .stack/dev
stack-status:
    scripts/stack.sh status --dir {{dev_stack}}

# write nats/ to the running dev NATS (.stack/dev): create what is missing, update what
# differs, print each change. Services never rewrite an existing stream or consumer.
nats-apply:
    @[ -f {{dev_stack}}/env ] || { echo "no dev stack in {{dev_stack}}: start one with ./x up or ./x stack-up"; exit 1; }
    cargo build -q -p nats-apply
    set -a; source {{dev_stack}}/env; source {{dev_stack}}/nats.passwords; set +a; \
      NATS_USER=operator NATS_PASSWORD="$NATS_PASSWORD_OPERATOR" target/debug/nats-apply

# print a dev JWT (HS256); e.g. ./x jwt --sub T2 --role manager --ttl 600
jwt *args:
    python3 scripts/devjwt.py --secret "${JWT_SECRET:-dev-secret-change-me-0123456789abcdef}" "$@"

# benchmark through the public API on a private stack, e.g. ./x bench --instances "1 2" --duration 60 (--help)
bench *args:
    scripts/bench.sh "$@"

# format all Rust code
fmt:
    cargo fmt --all

# check formatting and clippy with warnings as errors (what CI would reject)
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
