"""Who causes events: every event records an `actor` (design contract,
"States and events"). A caller's token subject, or one of these."""

LOCAL_ACTOR = "local"
"""The single local caller (stdio, the command line, tests)."""
SWEEPER_ACTOR = "system:sweeper"
"""The expiry sweep and idle-server stops, and what they finish on resume."""
SCHEDULER_ACTOR = "system:scheduler"
"""Grants and time-outs of queued requests, made while serving a pool's queue."""
PROVISIONER_ACTOR = "system:provisioner"
"""What the provisioner saw happen to a process (starts, health checks, exits,
restarts, stops) and what reconciliation at start corrected."""
