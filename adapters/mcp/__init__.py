"""The MCP server: the ledger's tools and resources, its background work, and
its transports (stdio, streamable HTTP)."""
