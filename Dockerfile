# Builds the cdc binary for docker-compose.yml (docker build -t cdc .).
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies first, on stub sources: this layer is reused until Cargo.toml or Cargo.lock change,
# so editing src/ rebuilds only cdc itself.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src target/release/cdc target/release/deps/cdc-* target/release/deps/libcdc-* \
       target/release/.fingerprint/cdc-*

# Then the sources (touched, so cargo never takes the stub's build for theirs).
COPY src ./src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/cdc /usr/local/bin/cdc
ENTRYPOINT []
CMD ["cdc", "run"]
