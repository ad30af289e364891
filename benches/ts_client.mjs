// The official TypeScript SDK client (npm @modelcontextprotocol/sdk, what most
// desktop clients are built on) calling one tool, for `cargo bench --bench
// gateway`: p50/p99 of sequential calls and throughput with 16 and 32 calls in
// flight, and the client's own CPU time per call. Prints one JSON line.
//
//   node ts_client.mjs SDK_DIR CALLS TOOL stdio COMMAND [ARGS...]
//   node ts_client.mjs SDK_DIR CALLS TOOL http URL [BEARER_TOKEN]
//   node ts_client.mjs SDK_DIR CALLS TOOL sse URL [BEARER_TOKEN]
//
// SDK_DIR is a node_modules folder holding @modelcontextprotocol/sdk.
import { pathToFileURL } from "node:url";
import path from "node:path";

const [sdkDir, callsText, tool, mode, target, ...rest] = process.argv.slice(2);
const calls = Number(callsText);
const load = (p) => import(pathToFileURL(path.join(sdkDir, "@modelcontextprotocol/sdk/dist/esm", p)).href);
const { Client } = await load("client/index.js");

let transport;
if (mode === "stdio") {
  const { StdioClientTransport } = await load("client/stdio.js");
  transport = new StdioClientTransport({ command: target, args: rest, env: process.env, stderr: "ignore" });
} else if (mode === "http" || mode === "sse") {
  const headers = rest[0] ? { Authorization: `Bearer ${rest[0]}` } : {};
  if (mode === "http") {
    const { StreamableHTTPClientTransport } = await load("client/streamableHttp.js");
    transport = new StreamableHTTPClientTransport(new URL(target), { requestInit: { headers } });
  } else {
    const { SSEClientTransport } = await load("client/sse.js");
    transport = new SSEClientTransport(new URL(target), { requestInit: { headers }, eventSourceInit: { headers } });
  }
} else {
  throw new Error(`unknown mode ${mode}`);
}

const client = new Client({ name: "mcp-manager-bench", version: "1" });
await client.connect(transport);

// Wait until the tool is listed (a gateway lists a server once it is up).
const deadline = Date.now() + 60_000;
for (;;) {
  const { tools } = await client.listTools();
  if (tools.some((t) => t.name === tool)) break;
  if (Date.now() > deadline) throw new Error(`tool ${tool} never listed`);
  await new Promise((r) => setTimeout(r, 50));
}

const call = (i) => client.callTool({ name: tool, arguments: { message: `hello ${i}` } });
for (let i = 0; i < Math.min(200, calls); i++) await call(i); // warm up

const latencies = [];
const cpuStart = process.cpuUsage();
for (let i = 0; i < calls; i++) {
  const start = process.hrtime.bigint();
  await call(i);
  latencies.push(Number(process.hrtime.bigint() - start) / 1000);
}
const cpu = process.cpuUsage(cpuStart);
latencies.sort((a, b) => a - b);
const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))];

async function throughput(inFlight) {
  let next = 0;
  const start = process.hrtime.bigint();
  const worker = async () => {
    while (next < calls) {
      const i = next++;
      await call(i);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, worker));
  return calls / (Number(process.hrtime.bigint() - start) / 1e9);
}

const rps16 = await throughput(16);
const rps32 = await throughput(32);
console.log(
  JSON.stringify({
    p50_us: at(0.5),
    p99_us: at(0.99),
    rps16,
    rps32,
    client_cpu_us_per_call: (cpu.user + cpu.system) / calls,
  }),
);
await client.close();
process.exit(0);
