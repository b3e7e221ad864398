"""What the MCP tools take and give: pydantic models in the original units,
one module per tool group, with the functions that build each result."""
