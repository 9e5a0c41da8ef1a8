# Portico: multi-stage build, small non-root runtime image.
#   docker build -t portico .
#   docker run -e PORTICO_ADMIN_TOKEN=... -p 8080:8080 -p 9901:9901 portico
#   (config/container.yaml; mount your own over /etc/portico/portico.yaml)
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked -p portico \
    && strip target/release/portico

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin portico \
    && mkdir -p /etc/portico
COPY --from=build /src/target/release/portico /usr/local/bin/portico
COPY config/container.yaml /etc/portico/portico.yaml
USER 10001
EXPOSE 8080 8443 9901
ENTRYPOINT ["/usr/local/bin/portico"]
CMD ["run", "-c", "/etc/portico/portico.yaml"]
