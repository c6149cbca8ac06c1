// Two agents hand a lock over through airlock, with the official TypeScript MCP SDK
// (npm @modelcontextprotocol/sdk). Plain JavaScript modules, so Node runs it as is:
//
//   npm install
//   AIRLOCK_TOKEN=$(cat ~/.airlock/token) node handoff.mjs    # AIRLOCK_URL defaults to the daemon
//
// Agent A takes the lock `deploy` and starts working. Agent B asks for the same lock with
// `wait_seconds`: its call blocks *in the daemon* (no retry loop) while A works. A leaves a note
// for B and releases the lock; at that instant B's call returns with the lock, and B reads A's
// note. Exits 0 when the handoff happened as described, 1 otherwise.

import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const url = process.env.AIRLOCK_URL ?? "http://127.0.0.1:27183/mcp";
const home = process.env.AIRLOCK_HOME ?? join(homedir(), ".airlock");
const token = process.env.AIRLOCK_TOKEN ?? readFileSync(join(home, "token"), "utf8").trim();

/** One agent's MCP session: Streamable HTTP with the bearer token. */
async function connect(name) {
  const client = new Client({ name, version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(new URL(url), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
  await client.connect(transport);
  return client;
}

/** A tool's answer: its JSON text (content[0]), or an exception for a tool error. */
async function call(client, name, args) {
  // A blocking call may take up to wait_seconds (50 at most) to answer.
  const result = await client.callTool({ name, arguments: args }, undefined, { timeout: 90_000 });
  if (result.isError) throw new Error(`${name}: ${result.content[0].text}`);
  return JSON.parse(result.content[0].text);
}

function event() {
  let set;
  const done = new Promise((resolve) => (set = resolve));
  return { set, wait: () => done };
}

async function agentA(a, aHolds, bWaits) {
  await call(a, "delete_note", { key: "deploy/status" }); // from an earlier run
  const got = await call(a, "lock_resource", { name: "deploy", agent_id: "agent:a" });
  if (!got.locked) throw new Error(`A did not get the lock: ${JSON.stringify(got)}`);
  console.log(`A: holds deploy (fence ${got.fence}); working…`);
  aHolds.set();
  await bWaits.wait(); // B's call is on its way; the daemon parks it until A releases
  await sleep(1000);
  await call(a, "set_note", { key: "deploy/status", value: "built v2, B: ship it" });
  const released = await call(a, "unlock_resource", { name: "deploy", lock_token: got.lock_token });
  if (!released.released) throw new Error(`A could not release: ${JSON.stringify(released)}`);
  console.log("A: left a note and released deploy");
  return got.fence;
}

async function agentB(b, aHolds, bWaits) {
  await aHolds.wait();
  console.log("B: asking for deploy, waiting up to 30 s in the daemon");
  const pending = call(b, "lock_resource", { name: "deploy", agent_id: "agent:b", wait_seconds: 30 });
  await sleep(500);
  bWaits.set();
  const got = await pending;
  if (!got.locked) throw new Error(`B did not get the lock: ${JSON.stringify(got)}`);
  const note = await call(b, "get_note", { key: "deploy/status" });
  console.log(`B: got deploy (fence ${got.fence}); A's note says: ${JSON.stringify(note.value)}`);
  await call(b, "unlock_resource", { name: "deploy", lock_token: got.lock_token });
  return [got.fence, note.value ?? ""];
}

const a = await connect("agent-a");
const b = await connect("agent-b");
let ok = false;
try {
  const aHolds = event();
  const bWaits = event();
  const [fenceA, [fenceB, note]] = await Promise.all([
    agentA(a, aHolds, bWaits),
    agentB(b, aHolds, bWaits),
  ]);
  // B's grant came after A's (a later fence) and after A's note (written before releasing).
  ok = fenceB > fenceA && note.startsWith("built v2");
} finally {
  await a.close();
  await b.close();
}
console.log(`handoff: ${ok ? "ok" : "FAILED"}`);
process.exit(ok ? 0 : 1);
