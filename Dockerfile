# The mcp-manager image: one static binary (musl), run as a non-root user.
#
#   docker build -t mcp-manager .
#
# The runtime stage is Alpine for its shell (the task runner's executor and many
# servers' commands are `sh -c ...`). Images of servers that need Node or Python
# take the binary alone, which runs on any Linux:
#
#   COPY --from=mcp-manager /usr/local/bin/mcp-manager /usr/local/bin/mcp-manager
#
# Not built in this project's CI: its machines run no Docker engine and reach no
# image registry (README, "Kubernetes manifests").

FROM rust:1-alpine AS build
RUN apk add --no-cache musl-dev
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
COPY schemas schemas
# musl targets link statically by default; `--locked`: exactly the reviewed dependencies.
RUN cargo build --release --locked --bin mcp-manager \
 && strip target/release/mcp-manager \
 && ! ldd target/release/mcp-manager 2>/dev/null | grep -q '=>'

FROM alpine:3
RUN adduser -D -H -u 65532 -h /tmp mcp
COPY --from=build /src/target/release/mcp-manager /usr/local/bin/mcp-manager
USER 65532:65532
ENV HOME=/tmp
EXPOSE 8080
# `render kubernetes` gives each pod `mcp-manager bridge ... -- COMMAND`.
ENTRYPOINT ["mcp-manager"]
CMD ["--help"]
