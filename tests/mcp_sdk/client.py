"""A real MCP client (the official Python SDK) talking to URL through keygate
with KEY: initializes, lists the tools, calls each `name=arg` given, and prints
one JSON document: {"tools": [...], "calls": {name: {"text"| "error": ...}}}.

    python client.py URL KEY [name=arg ...]
"""

import asyncio
import json
import sys

from mcp import ClientSession
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.exceptions import McpError

ARGS = {"search_docs": "query", "get_document": "id", "delete_document": "id", "report": "topic"}


async def main(url: str, key: str, calls: list[str]) -> dict:
    out: dict = {"calls": {}}
    headers = {"Authorization": f"Bearer {key}"}
    async with streamablehttp_client(url, headers=headers) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            try:
                tools = await session.list_tools()
                out["tools"] = sorted(t.name for t in tools.tools)
            except McpError as e:
                out["tools"] = {"error": {"code": e.error.code, "message": e.error.message, "data": e.error.data}}
            for call in calls:
                name, _, arg = call.partition("=")
                try:
                    result = await session.call_tool(name, {ARGS.get(name, "x"): arg})
                    text = " ".join(c.text for c in result.content if hasattr(c, "text"))
                    out["calls"][name] = {"text": text, "is_error": result.isError}
                except McpError as e:
                    out["calls"][name] = {"error": {"code": e.error.code, "message": e.error.message, "data": e.error.data}}
    return out


print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))))
