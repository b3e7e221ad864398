"""What a ledger tells whoever watches it work: retried units of work,
recorded batches and provisioning. By default nobody listens; the metrics
adapter does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

RetryReason = Literal["conflict", "stale_read", "time_behind"]
"""Why an attempt was run again: another writer saved an aggregate first
(`conflict`); a decision not to write rested on a cached read
(`stale_read`); the attempt's moment was earlier than an event it read
(`time_behind`). See command_runner.py."""

ProvisioningOutcome = Literal["active", "failed"]
"""What the provisioner did: set the allocation up, or raised."""


def _ignore(_: ProvisioningOutcome) -> None:
    return None


class LedgerObserver:
    """Told of a ledger's retries, batches and provisioning as they happen.

    Every method here does nothing; an adapter overrides them and sets
    `ledger.observer`. They are called with the ledger's lock held or while
    a command runs, so they must be quick and must not raise.
    """

    def retried(self, command: str, reason: RetryReason) -> None:
        """An attempt at `command` (e.g. "request_resources") was discarded
        for `reason`; it is run again unless it was the last attempt."""

    def batch_recorded(self, commands: int, events: int, *, ok: bool) -> None:
        """A batch of `commands` units of work with `events` events in all
        was recorded in one transaction (`ok`), or failed to be
        (group_commit.py)."""

    def provisioning(self, pool: str) -> Callable[[ProvisioningOutcome], None]:
        """Provisioning of one allocation of `pool` starts now.

        The answer is called once, with the outcome, when the provisioner
        returns or raises; the time between is the provisioning's duration.
        """
        return _ignore
