# walhook as a small sidecar image:  docker build -t walhook .
# The runtime image has the binary and nothing else (no shell, no package manager) and runs
# as a non-root user; `walhook health` is the HEALTHCHECK, so no curl is needed.

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: rebuilt only when Cargo.toml or Cargo.lock change.
# The stubs stand in for walhook's own sources (the manifest names a lib, a bin and a bench).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && echo '//! stub' > src/lib.rs \
 && echo 'fn main() {}' > benches/pipeline.rs \
 && cargo build --release --locked --bin walhook \
 && rm -rf src
# Then walhook itself (sql/ holds the schema migrations it compiles in). Copied files keep
# their old mtimes: touching the crate roots makes cargo rebuild the crate, not keep the stub.
COPY src src
COPY sql sql
COPY benches benches
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin walhook \
 && ./target/release/walhook --version

# glibc and libgcc only (the binary bundles its TLS roots); user 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/walhook /usr/local/bin/walhook
ENV WALHOOK_CONFIG=/etc/walhook/walhook.toml
EXPOSE 8187
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["walhook", "health"]
ENTRYPOINT ["walhook"]
CMD ["run"]
