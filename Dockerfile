# walhook as a small sidecar image: a static-ish release binary on a slim base.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/walhook /usr/local/bin/walhook
USER nobody
EXPOSE 9187
ENTRYPOINT ["walhook"]
CMD ["run"]
