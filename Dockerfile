# bigbrotr: the long-running ingestion container.
#
#   docker build -t bigbrotr .
#   docker run -e BIGBROTR_DATABASE_URL='host=db user=bigbrotr dbname=bigbrotr' bigbrotr
#
# Configuration: mount a file at /etc/bigbrotr/bigbrotr.toml (the image ships the default one)
# and/or set BIGBROTR_* environment variables (see config/bigbrotr.toml).

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY stages/Cargo.toml stages/Cargo.toml
COPY engine engine
COPY stages stages
COPY sql sql
COPY config config
COPY benches benches
RUN cargo build --release --locked --bin bigbrotr && strip target/release/bigbrotr

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/bigbrotr --create-home bigbrotr
COPY --from=build /src/target/release/bigbrotr /usr/local/bin/bigbrotr
COPY config/bigbrotr.toml /etc/bigbrotr/bigbrotr.toml
COPY seeds /usr/share/bigbrotr/seeds
ENV BIGBROTR_CONFIG=/etc/bigbrotr/bigbrotr.toml \
    BIGBROTR_SEEDS=/usr/share/bigbrotr/seeds/relays.txt \
    BIGBROTR_LOG=info
USER bigbrotr
WORKDIR /var/lib/bigbrotr
ENTRYPOINT ["/usr/local/bin/bigbrotr"]
CMD ["run"]
