#!/usr/bin/env python3
"""Drives a running airlock daemon with the official Python MCP SDK (PyPI `mcp`).

Usage: python_client.py URL TOKEN      (or AIRLOCK_URL / AIRLOCK_TOKEN in the environment)

Connects over Streamable HTTP with `Authorization: Bearer TOKEN`, lists the tools, calls
set_note, get_note, increment_counter, lock_resource and unlock_resource, and checks every answer
against the contract. With mcp 2.x it does this twice, once per protocol era (the `initialize`
handshake and `server/discover`); with mcp 1.x once, with `initialize`. Prints one line per
check and a final `python-mcp-client: N passed, M failed`; exits 1 on any failure.
"""

import asyncio
import json
import os
import sys
import traceback
import uuid

PASSED = 0
FAILED = 0


def check(name, ok, detail=""):
    global PASSED, FAILED
    if ok:
        PASSED += 1
        print(f"ok   {name}")
    else:
        FAILED += 1
        print(f"FAIL {name} {detail}")


def result_json(result):
    """The tool's JSON answer from content[0].text, checking it is a text block."""
    if getattr(result, "is_error", False) or getattr(result, "isError", False):
        raise AssertionError(f"tool error: {result}")
    block = result.content[0]
    if getattr(block, "type", None) != "text":
        raise AssertionError(f"content[0] is not text: {block}")
    return json.loads(block.text)


def structured(result):
    value = getattr(result, "structured_content", None)
    if value is None:
        value = getattr(result, "structuredContent", None)
    return value


EXPECTED_TOOLS = {
    "set_note", "get_note", "list_notes", "delete_note", "set_note_if", "increment_counter",
    "lock_resource", "unlock_resource", "renew_lock", "list_locks", "lock_resources",
    "register_agent", "unregister_agent", "list_agents", "signal_event", "wait_for_event",
    "clear_event", "push_task", "claim_next_task", "complete_task", "fail_task", "list_tasks",
}


async def exercise(label, list_tools, call_tool):
    """The checks, given the era-specific `list_tools()` and `call_tool(name, args)`."""
    run = uuid.uuid4().hex[:8]

    async def step(name, coro_fn):
        try:
            await coro_fn()
        except Exception as e:  # noqa: BLE001 - report and carry on
            check(f"{label}: {name}", False, f"{type(e).__name__}: {e}")
            traceback.print_exc(file=sys.stdout)

    async def tools():
        listed = await list_tools()
        names = {t.name for t in listed.tools}
        missing = EXPECTED_TOOLS - names
        get_note = next(t for t in listed.tools if t.name == "get_note")
        schema = get_note.input_schema if hasattr(get_note, "input_schema") else get_note.inputSchema
        ann = get_note.annotations
        read_only = getattr(ann, "read_only_hint", None)
        if read_only is None:
            read_only = getattr(ann, "readOnlyHint", None)
        check(
            f"{label}: tools/list",
            not missing and schema.get("required") == ["key"] and read_only is True,
            f"missing={sorted(missing)} schema={schema} annotations={ann}",
        )

    async def notes():
        key = f"py-{run}"
        saved = await call_tool("set_note", {"key": key, "value": "from python", "author": "py"})
        got = await call_tool("get_note", {"key": key})
        absent = await call_tool("get_note", {"key": f"{key}-absent"})
        ok = (
            result_json(saved) == {"saved": True}
            and structured(saved) == {"saved": True}
            and result_json(got) == {"key": key, "value": "from python", "author": "py"}
            and result_json(absent) == {"found": False}
        )
        check(f"{label}: set_note/get_note", ok,
              f"{result_json(saved)} {result_json(got)} {result_json(absent)}")

    async def counter():
        name = f"py-{run}"
        values = [result_json(await call_tool("increment_counter", {"name": name}))["value"]
                  for _ in range(3)]
        by = result_json(await call_tool("increment_counter", {"name": name, "by": 10}))
        check(f"{label}: increment_counter", values == [1, 2, 3] and by == {"value": 13},
              f"{values} {by}")

    async def locks():
        name = f"py-lock-{run}"
        got = result_json(await call_tool("lock_resource", {"name": name, "agent_id": "py-a"}))
        contended = result_json(await call_tool("lock_resource", {"name": name, "agent_id": "py-b"}))
        released = result_json(await call_tool(
            "unlock_resource", {"name": name, "lock_token": got.get("lock_token")}))
        again = result_json(await call_tool(
            "unlock_resource", {"name": name, "lock_token": got.get("lock_token")}))
        ok = (
            got.get("locked") is True
            and isinstance(got.get("lock_token"), str)
            and isinstance(got.get("expires_in_seconds"), int)
            and contended.get("locked") is False
            and contended.get("held_by") == "py-a"
            and released == {"released": True}
            and again.get("released") is False
        )
        check(f"{label}: lock_resource/unlock_resource", ok,
              f"{got} {contended} {released} {again}")

    async def tool_error():
        r = await call_tool("set_note", {"key": "", "value": "x"})
        is_error = getattr(r, "is_error", None)
        if is_error is None:
            is_error = getattr(r, "isError", None)
        text = r.content[0].text
        check(f"{label}: argument error is a tool error naming the field",
              is_error is True and text.startswith("key:"), f"{r}")

    for name, fn in [("tools/list", tools), ("notes", notes), ("counter", counter),
                     ("locks", locks), ("tool error", tool_error)]:
        await step(name, fn)


async def with_mcp_2(url, headers):
    """mcp 2.x: `Client` over `streamable_http_client` with an httpx2 client carrying the token."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    for mode in ("legacy", "auto"):
        async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http:
            transport = streamable_http_client(url, http_client=http)
            async with Client(transport, mode=mode) as client:
                version = getattr(client.session, "protocol_version", None)
                label = f"mcp-2 {mode} ({version})"
                print(f"connected: {label}")
                await exercise(label, client.list_tools, client.call_tool)


async def with_mcp_1(url, headers):
    """mcp 1.x: `ClientSession` over `streamablehttp_client(url, headers=...)`."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamablehttp_client

    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            label = f"mcp-1 initialize ({init.protocolVersion})"
            print(f"connected: {label}")
            await exercise(label, session.list_tools, session.call_tool)


async def main():
    url = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("AIRLOCK_URL")
    token = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("AIRLOCK_TOKEN")
    if not url or not token:
        print("usage: python_client.py URL TOKEN (or AIRLOCK_URL and AIRLOCK_TOKEN)")
        return 2
    headers = {"Authorization": f"Bearer {token}"}
    from importlib.metadata import version

    sdk = version("mcp")
    print(f"python mcp SDK {sdk} -> {url}")
    try:
        if int(sdk.split(".")[0]) >= 2:
            await with_mcp_2(url, headers)
        else:
            await with_mcp_1(url, headers)
    except Exception as e:  # noqa: BLE001 - a connection failure is a failed check
        check("connect", False, f"{type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stdout)
    if PASSED == 0 and FAILED == 0:
        check("anything ran", False)
    print(f"python-mcp-client: {PASSED} passed, {FAILED} failed")
    return 0 if FAILED == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
