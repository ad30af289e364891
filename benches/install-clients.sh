#!/bin/sh
# Installs what `cargo bench --bench gateway` needs for its TypeScript-client
# part: a Node 22, the official TypeScript SDK (@modelcontextprotocol/sdk) and
# the peer gateways it compares against (punkpeye mcp-proxy, supergateway,
# mcp-hub), into PREFIX (default ~/.cache/mcp-manager/bench), then prints the
# line that enables it:
#
#     eval "$(sh benches/install-clients.sh)" && cargo bench --bench gateway
set -eu
prefix="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/mcp-manager/bench}"
mkdir -p "$prefix"
npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
    node@22 @modelcontextprotocol/sdk@1 mcp-proxy@6 supergateway@4 mcp-hub@4 >&2
echo "export MCP_BENCH_NODE='$prefix/node_modules/node/bin/node' MCP_BENCH_NODE_MODULES='$prefix/node_modules'"
