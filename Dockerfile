# bigbrotr: the long-running ingestion container.
#
#   docker build -t bigbrotr .
#   docker run -e BIGBROTR_DATABASE_URL='host=db user=bigbrotr dbname=bigbrotr' bigbrotr
#
# Configuration: mount a file at /etc/bigbrotr/bigbrotr.toml (the image ships the default one)
# and/or set BIGBROTR_* environment variables (see config/bigbrotr.toml).
# HTTP (health, readiness, metrics, API) listens on 0.0.0.0:8080; the HEALTHCHECK asks
# /health there. docker-compose.yml runs it with PostgreSQL, PgBouncer and Tor.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY stages/Cargo.toml stages/Cargo.toml
COPY engine engine
COPY stages stages
COPY pgcluster pgcluster
COPY testkit testkit
COPY sql sql
COPY config config
COPY benches benches
COPY vendor vendor
RUN cargo build --release --locked --bin bigbrotr && strip target/release/bigbrotr

FROM debian:bookworm-slim
# PostgreSQL client tools for `bigbrotr backup` / `restore` inside the container: pg_dump must
# be at least the server's major version, and docker-compose.yml runs PostgreSQL 17 while
# bookworm ships 15, so they come from the PostgreSQL project's Debian repository (client
# package only: pg_dump, pg_restore, psql and libpq, ~15 MB; gnupg is not needed with a
# signed-by keyring file). Keep PG_MAJOR equal to the compose file's postgres image.
ARG PG_MAJOR=17
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && install -d /usr/share/postgresql-common/pgdg \
 && curl -fsSL -o /usr/share/postgresql-common/pgdg/apt.postgresql.org.asc \
      https://www.postgresql.org/media/keys/ACCC4CF8.asc \
 && echo "deb [signed-by=/usr/share/postgresql-common/pgdg/apt.postgresql.org.asc] https://apt.postgresql.org/pub/repos/apt bookworm-pgdg main" \
      > /etc/apt/sources.list.d/pgdg.list \
 && apt-get update \
 && apt-get install -y --no-install-recommends "postgresql-client-${PG_MAJOR}" \
 && rm -rf /var/lib/apt/lists/* \
 && test -x "/usr/lib/postgresql/${PG_MAJOR}/bin/pg_dump" \
 && useradd --system --uid 10001 --home-dir /var/lib/bigbrotr --create-home bigbrotr
COPY --from=build /src/target/release/bigbrotr /usr/local/bin/bigbrotr
COPY config/bigbrotr.toml /etc/bigbrotr/bigbrotr.toml
COPY seeds /usr/share/bigbrotr/seeds
ENV BIGBROTR_CONFIG=/etc/bigbrotr/bigbrotr.toml \
    BIGBROTR_SEEDS=/usr/share/bigbrotr/seeds/relays.txt \
    BIGBROTR_HTTP_LISTEN=0.0.0.0:8080 \
    BIGBROTR_LOG=info
USER bigbrotr
WORKDIR /var/lib/bigbrotr
EXPOSE 8080
# /health answers while the process serves HTTP (`run`, long-running `sync`).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/health"]
ENTRYPOINT ["/usr/local/bin/bigbrotr"]
CMD ["run"]
