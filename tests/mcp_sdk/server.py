"""A real MCP server (the official Python SDK's FastMCP over Streamable HTTP) for
keygate's MCP tests: four tools, two annotated read-only. Every tool call and
every tools/list it serves is appended to LOG, so a test can prove what reached it.

    python server.py PORT LOG json|sse
"""

import sys

from mcp.server.fastmcp import FastMCP
from mcp.types import ToolAnnotations

port, log, mode = int(sys.argv[1]), sys.argv[2], sys.argv[3]


def record(line: str) -> None:
    with open(log, "a", encoding="utf-8") as f:
        f.write(line + "\n")


server = FastMCP("keygate-test", host="127.0.0.1", port=port, json_response=(mode == "json"), log_level="WARNING")


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def search_docs(query: str) -> str:
    """Search the documents."""
    record(f"call search_docs {query}")
    return f"3 documents match {query}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def get_document(id: str) -> str:
    """Read one document."""
    record(f"call get_document {id}")
    return f"document {id}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True))
def delete_document(id: str) -> str:
    """Delete one document."""
    record(f"call delete_document {id}")
    return f"deleted {id}"


@server.tool()
def report(topic: str) -> str:
    """Write a report (not annotated)."""
    record(f"call report {topic}")
    return f"report on {topic}"


original_list = server._tool_manager.list_tools


def list_tools():
    record("tools/list")
    return original_list()


server._tool_manager.list_tools = list_tools

server.run(transport="streamable-http")
