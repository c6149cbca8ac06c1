#!/usr/bin/env python3
"""Two agents hand a lock over through airlock, with the official Python MCP SDK (PyPI `mcp`, 2.x).

    pip install 'mcp>=2'
    AIRLOCK_TOKEN=$(cat ~/.airlock/token) python3 handoff.py    # AIRLOCK_URL defaults to the daemon

Agent A takes the lock `deploy` and starts working. Agent B asks for the same lock with
`wait_seconds`: its call blocks *in the daemon* (no retry loop) while A works. A leaves a note
for B and releases the lock; at that instant B's call returns with the lock, and B reads A's note.
Exits 0 when the handoff happened as described, 1 otherwise.
"""

import asyncio
import json
import os
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

URL = os.environ.get("AIRLOCK_URL", "http://127.0.0.1:27183/mcp")
TOKEN = os.environ.get("AIRLOCK_TOKEN") or open(
    os.path.join(os.environ.get("AIRLOCK_HOME", os.path.expanduser("~/.airlock")), "token")
).read().strip()


def answer(result):
    """A tool's answer: its JSON text (content[0]), or an exception for a tool error."""
    if result.is_error:
        raise RuntimeError(result.content[0].text)
    return json.loads(result.content[0].text)


async def connect(stack):
    """One agent's MCP session: Streamable HTTP with the bearer token."""
    http = await stack.enter_async_context(
        httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {TOKEN}"},
            # A blocking call may take up to wait_seconds (50 at most) to answer.
            timeout=httpx2.Timeout(30, read=90),
        )
    )
    return await stack.enter_async_context(
        Client(streamable_http_client(URL, http_client=http))
    )


async def agent_a(a, a_holds, b_waits):
    answer(await a.call_tool("delete_note", {"key": "deploy/status"}))  # from an earlier run
    got = answer(await a.call_tool("lock_resource", {"name": "deploy", "agent_id": "agent:a"}))
    assert got["locked"], got
    print(f"A: holds deploy (fence {got['fence']}); working…")
    a_holds.set()
    await b_waits.wait()  # B's call is on its way; the daemon parks it until A releases
    await asyncio.sleep(1)
    answer(await a.call_tool("set_note", {"key": "deploy/status", "value": "built v2, B: ship it"}))
    released = answer(await a.call_tool(
        "unlock_resource", {"name": "deploy", "lock_token": got["lock_token"]}))
    assert released["released"], released
    print("A: left a note and released deploy")
    return got["fence"]


async def agent_b(b, a_holds, b_waits):
    await a_holds.wait()
    print("B: asking for deploy, waiting up to 30 s in the daemon")
    call = asyncio.ensure_future(b.call_tool(
        "lock_resource", {"name": "deploy", "agent_id": "agent:b", "wait_seconds": 30}))
    await asyncio.sleep(0.5)
    b_waits.set()
    got = answer(await call)
    assert got["locked"], got
    note = answer(await b.call_tool("get_note", {"key": "deploy/status"}))
    print(f"B: got deploy (fence {got['fence']}); A's note says: {note['value']!r}")
    answer(await b.call_tool("unlock_resource", {"name": "deploy", "lock_token": got["lock_token"]}))
    return got["fence"], note["value"]


async def main():
    from contextlib import AsyncExitStack

    async with AsyncExitStack() as stack:
        a = await connect(stack)
        b = await connect(stack)
        a_holds, b_waits = asyncio.Event(), asyncio.Event()
        fence_a, (fence_b, note) = await asyncio.gather(
            agent_a(a, a_holds, b_waits), agent_b(b, a_holds, b_waits))
    # B's grant came after A's (a later fence) and after A's note (written before releasing).
    ok = fence_b > fence_a and note.startswith("built v2")
    print("handoff:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
