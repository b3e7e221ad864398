"""Every tool the ledger serves: its title, hints and the scope it needs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mcp.server.mcpserver.tools import Tool
from mcp_types import ToolAnnotations

from allocation_ledger.adapters.http.auth import Scope
from allocation_ledger.adapters.mcp.schemas.output_schema import quick_to_check


@dataclass(frozen=True)
class ToolSpec:
    """How a tool presents itself, and the scope it needs."""

    title: str
    scope: Scope
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = True

    @property
    def annotations(self) -> ToolAnnotations:
        return ToolAnnotations(
            title=self.title,
            read_only_hint=self.read_only,
            destructive_hint=self.destructive,
            idempotent_hint=self.idempotent,
            open_world_hint=False,
        )


TOOLS: dict[str, ToolSpec] = {
    "request_resources": ToolSpec("Request resources", "write", idempotent=False),
    "release_resources": ToolSpec("Release resources", "write", destructive=True),
    "get_capacity": ToolSpec("Get capacity", "read", read_only=True),
    "get_allocation": ToolSpec("Get allocation", "read", read_only=True),
    "list_allocations": ToolSpec("List allocations", "read", read_only=True),
    "cleanup_expired": ToolSpec(
        "Clean up expired allocations", "write", destructive=True
    ),
    "renew_allocation": ToolSpec("Renew allocation", "write", idempotent=False),
    "get_allocation_history": ToolSpec(
        "Get allocation history", "read", read_only=True
    ),
    "set_capacity": ToolSpec("Set pool capacity", "admin", destructive=True),
    "get_usage": ToolSpec("Get usage", "read", read_only=True),
    "get_queue": ToolSpec("Get queue", "read", read_only=True),
    "set_quota": ToolSpec("Set tenant quota", "admin", destructive=True),
    "set_scheduling": ToolSpec("Set pool scheduling", "admin", destructive=True),
    "list_mcp_servers": ToolSpec("List MCP servers", "read", read_only=True),
    "get_mcp_status": ToolSpec("Get MCP server status", "read", read_only=True),
    "await_allocation": ToolSpec("Await allocation", "read", read_only=True),
}
"""Every tool. Scopes: admin includes write, write includes read. Releasing,
cleaning up and setting capacity, quotas or scheduling take capacity from
someone or overwrite settings (destructive); requesting and renewing do
something new on every call."""


def strict_tool(fn: Callable[..., Any], spec: ToolSpec) -> Tool:
    """A tool whose arguments must all be known: a misspelt one is an error.

    MCPServer ignores unknown arguments by default, which would turn a typo
    such as `worker=4` into a silent request for no workers. Its output
    schema is published in the shape clients check faster
    (schemas/output_schema.py).
    """
    tool = Tool.from_function(
        fn,
        description=inspect.cleandoc(fn.__doc__ or ""),
        annotations=spec.annotations,
        title=spec.title,
    )
    model = tool.fn_metadata.arg_model
    model.model_config["extra"] = "forbid"
    model.model_rebuild(force=True)
    tool.parameters = model.model_json_schema(by_alias=True)
    metadata = tool.fn_metadata
    if metadata.output_schema is not None:
        metadata.output_schema = quick_to_check(metadata.output_schema)
    return tool


def served_tools(groups: Sequence[object]) -> list[Tool]:
    """Every tool in TOOLS, in that order, each served by the group that has it."""
    tools: list[Tool] = []
    for name, spec in TOOLS.items():
        handlers = [getattr(g, name) for g in groups if hasattr(g, name)]
        if len(handlers) != 1:
            msg = f"tool {name!r} is served by {len(handlers)} groups, not one"
            raise LookupError(msg)
        tools.append(strict_tool(handlers[0], spec))
    return tools
