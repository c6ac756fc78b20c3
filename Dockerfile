# syntax=docker/dockerfile:1
# One image with all service binaries (ingress, processor, persister, fanout, console);
# docker-compose.yml picks the binary per service with `command`.

# ---- build -------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target dir between builds; the binaries are copied
# out in the same step because the target cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p ingress -p processor -p persister -p fanout -p console \
 && mkdir -p /out \
 && cp target/release/ingress target/release/processor target/release/persister target/release/fanout target/release/console /out/

# ---- runtime -----------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: TLS to managed NATS/Redis/Mongo; curl: the compose healthchecks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home pos
COPY --from=builder /out/ /usr/local/bin/
USER pos
ENV RUST_LOG=info
# Default ingress; docker-compose.yml sets the binary per service (ingress | processor | persister | fanout).
CMD ["ingress"]
