# pgfeed: multi-stage build of exactly what .ci/run builds, into a small non-root runtime image.
# (No Docker engine runs on the development machines; this file is kept simple on purpose.)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY src src
COPY sql sql
COPY migrations migrations
COPY web web
RUN cargo build --release --locked --bin pgfeed

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/pgfeed --create-home pgfeed
COPY --from=build /src/target/release/pgfeed /usr/local/bin/pgfeed
USER pgfeed
WORKDIR /var/lib/pgfeed
# Configure with the same environment variables as anywhere else. In a container pgfeed must
# listen on all interfaces, which requires auth: set PGFEED_JWT_SECRET, and DATABASE_URL (the
# image carries no PostgreSQL, so embedded mode is not available here).
ENV PGFEED_BIND=0.0.0.0:8080 \
    RUST_LOG=pgfeed=info \
    PGFEED_LOG_FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["pgfeed", "healthcheck"]
ENTRYPOINT ["pgfeed"]
CMD ["serve"]
