"""The ledger's MCPServer: the SDK's server, with the ledger's answers on
three points.

- Tool calls are measured (adapters/metrics), and arguments that do not
  validate are told one sentence per problem (argument_errors.py) instead
  of pydantic's report.
- `resources/list` lists concrete resources (resources.py,
  `ResourceListing`): each pool's capacity and the caller's unfinished
  allocations.
- `prompts/get` of a prompt that does not exist, or without a required
  argument, is an invalid-params error naming the prompts there are (the
  SDK answers an internal error).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    CallToolResult,
    GetPromptResult,
    InputRequiredResult,
)
from mcp_types import Resource as MCPResource
from pydantic import ValidationError

from allocation_ledger.adapters.mcp.argument_errors import argument_problems
from allocation_ledger.adapters.mcp.background import BackgroundWork
from allocation_ledger.adapters.mcp.change_feed import ChangeFeed
from allocation_ledger.adapters.mcp.tools.specs import TOOLS
from allocation_ledger.adapters.metrics.instruments import LedgerMetrics

ResourceLister = Callable[[], Awaitable[list[MCPResource]]]


class LedgerServer(MCPServer[BackgroundWork]):
    """MCPServer with measured tool calls, readable argument errors, concrete
    resources and plain prompt errors (module docstring).

    `metrics` records every tool call; `list_concrete` answers the concrete
    resources (listed before any registered with `resource()`); `changes`
    is nudged after every call of a tool that writes, so whoever waits for
    a change hears of it at once. Other arguments are MCPServer's.
    """

    def __init__(
        self,
        *args: Any,
        metrics: LedgerMetrics,
        list_concrete: ResourceLister,
        changes: ChangeFeed,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = metrics
        self.list_concrete = list_concrete
        self.changes = changes

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any],
        context: Context[BackgroundWork, Any] | None = None,
    ) -> CallToolResult | InputRequiredResult:
        """MCPServer.call_tool, measured; a ToolError for arguments that do
        not validate says each problem in a sentence (its cause stays the
        ValidationError, which the SDK logs by field name)."""
        started = time.perf_counter()
        try:
            result = await super().call_tool(name, arguments, context)
        except UnexpectedToolError:
            self._nudge(name)
            self._called(name, started, None, "crash")
            raise
        except ToolError as error:
            cause = error.__cause__
            if not isinstance(cause, ValidationError):
                self._nudge(name)
                self._called(name, started, None, "refused")
                raise
            self._called(name, started, None, "invalid_arguments")
            problems = argument_problems(cause, self._argument_names(name))
            raise ToolError(f"Error executing tool {name}: {problems}") from cause
        except MCPError:
            self._called(name, started, None, "refused")
            raise
        self._nudge(name)
        structured = None
        if isinstance(result, CallToolResult):
            structured = result.structured_content
        self._called(name, started, structured, None)
        return result

    def _nudge(self, tool: str) -> None:
        """Tell the change feed to look now after a tool that may have
        written (even one that failed part way)."""
        spec = TOOLS.get(tool)
        if spec is None or not spec.read_only:
            self.changes.nudge()

    def _called(
        self,
        name: str,
        started: float,
        structured: dict[str, Any] | None,
        error: str | None,
    ) -> None:
        self.metrics.tool_called(
            name,
            time.perf_counter() - started,
            structured=structured,
            error=error,
        )

    def _argument_names(self, tool: str) -> list[str]:
        found = self._tool_manager.get_tool(tool)
        if found is None:
            return []
        return list(found.parameters.get("properties", {}))

    async def list_resources(self) -> list[MCPResource]:
        """The concrete resources, then any registered one by one."""
        return [*await self.list_concrete(), *await super().list_resources()]

    async def get_prompt(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        context: Context[BackgroundWork, Any] | None = None,
    ) -> GetPromptResult | InputRequiredResult:
        """MCPServer.get_prompt; an unknown prompt, a missing argument or
        one that does not validate is an invalid-params error saying so."""
        prompts = {prompt.name: prompt for prompt in await self.list_prompts()}
        prompt = prompts.get(name)
        if prompt is None:
            offered = ", ".join(sorted(prompts)) or "none"
            msg = f"unknown prompt {name!r}; the prompts are: {offered}"
            raise MCPError(code=INVALID_PARAMS, message=msg)
        given = arguments or {}
        missing = [
            argument.name
            for argument in prompt.arguments or []
            if argument.required and argument.name not in given
        ]
        if missing:
            msg = f"prompt {name}: {', '.join(missing)}: required (missing)"
            raise MCPError(code=INVALID_PARAMS, message=msg)
        try:
            return await super().get_prompt(name, arguments, context)
        except ValueError as error:
            cause = _validation_error(error)
            if cause is None:
                raise
            problems = argument_problems(
                cause, [a.name for a in prompt.arguments or []]
            )
            msg = f"prompt {name}: {problems}"
            raise MCPError(code=INVALID_PARAMS, message=msg) from cause


def _validation_error(error: BaseException) -> ValidationError | None:
    """The ValidationError `error` was raised from, however deep (the SDK
    wraps a prompt's in two ValueErrors); None if none."""
    cause = error.__cause__
    while cause is not None and not isinstance(cause, ValidationError):
        cause = cause.__cause__
    return cause
