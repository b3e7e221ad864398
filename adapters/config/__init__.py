"""The config file: settings, and the catalog of MCP servers and pools."""
