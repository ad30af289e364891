#!/bin/sh
# Installs the official MCP Inspector CLI (npm @modelcontextprotocol/inspector 2.x)
# and a Node 22 to run it into a local folder, then prints the line that enables
# the task-runner's Inspector integration test:
#
#     eval "$(.ci/install-inspector.sh)"      # sets MCP_INSPECTOR_CLI
#     cargo test --test it task_runner
#
# Usage: .ci/install-inspector.sh [PREFIX]
#   PREFIX defaults to ${XDG_CACHE_HOME:-~/.cache}/mcp-manager/inspector (outside
#   the repository, so nothing untracked appears in the work tree).
# Progress and errors go to stderr; stdout is only the export line.
#
# Why node@22 from npm: the Inspector 2.x needs Node >= 22.19 and CI machines may
# have an older one (DESIGN 5.6). Why "@^2" explicitly: npm running on an older
# Node otherwise picks the newest release whose `engines` match, an old 0.x.
set -eu

prefix="${1:-${XDG_CACHE_HOME:-$HOME/.cache}/mcp-manager/inspector}"
inspector="${MCP_INSPECTOR_VERSION:-^2}"

case "$prefix" in
    *[[:space:]]*)
        echo "install-inspector: the prefix must not contain whitespace: $prefix" >&2
        exit 1
        ;;
esac
command -v npm >/dev/null 2>&1 || {
    echo "install-inspector: npm is not installed" >&2
    exit 1
}

mkdir -p "$prefix"
echo "install-inspector: installing node@22 and @modelcontextprotocol/inspector@$inspector into $prefix" >&2
npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
    "node@22" "@modelcontextprotocol/inspector@$inspector" >&2

node="$prefix/node_modules/node/bin/node"
launcher="$(readlink -f "$prefix/node_modules/.bin/mcp-inspector")"
"$node" --version >/dev/null 2>&1 || {
    echo "install-inspector: $node does not run (did npm skip the node package's install script?)" >&2
    exit 1
}
version="$("$node" "$launcher" --version 2>/dev/null || true)"
echo "install-inspector: node $("$node" --version), inspector $version" >&2

echo "export MCP_INSPECTOR_CLI='$node $launcher --cli'"
