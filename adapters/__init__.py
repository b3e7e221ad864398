"""Wiring: persistence, settings, provisioners, the command line and MCP server."""
