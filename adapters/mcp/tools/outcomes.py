"""What a failed tool call tells its client about what was written.

An error reply means nothing was written, or says plainly what was: the
allocations and pool changes committed before the failure, and the write
whose outcome is not known when the connection broke while it was being
committed, with how to find out or settle it (design contract, invariant
7). The facts come from the write journal (adapters/storage/write_journal.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from allocation_ledger.adapters.storage.write_journal import CommandWrites

NOTHING_WRITTEN = "Nothing was written; it is safe to try again."


@dataclass(frozen=True)
class Settle:
    """How a client of one tool settles a call that failed part way.

    `check(ids)`: how to find out whether the write in doubt (of the
    allocations `ids`, maybe none) was committed; `finish(ids)`: what to do
    about a command that committed part of its work (`ids`: the allocations
    it wrote).
    """

    check: Callable[[list[str]], str]
    finish: Callable[[list[str]], str]


def repeat_settle(tool: str) -> Settle:
    """For a tool that changes nothing more when repeated."""
    text = (
        f"Calling {tool} again with the same arguments is safe: it changes "
        "nothing if the change was saved."
    )
    return Settle(check=lambda _: text, finish=lambda _: text)


def request_settle(request_id: str | None) -> Settle:
    """How to settle a request_resources call that failed part way."""
    if request_id is not None:
        again = (
            "Call request_resources again with the same arguments and "
            f"request_id {request_id!r}"
        )
        return Settle(
            check=lambda ids: (
                f"{again}: it answers {_names(ids)} if it was saved, and makes "
                "it if not."
            ),
            finish=lambda ids: (
                f"{again} to finish it, or release_resources {_names(ids)} to "
                "give it back."
            ),
        )
    return Settle(
        check=lambda ids: (
            f"get_allocation {_names(ids)} tells: if it is not found, nothing "
            "was written. (With a request_id, a retry would settle it.)"
        ),
        finish=lambda ids: (
            f"release_resources {_names(ids)} gives it back; otherwise the "
            "server's sweeper finishes it."
        ),
    )


def release_settle() -> Settle:
    text = (
        "Calling release_resources again is safe: it finishes the release, or "
        "changes nothing if it was saved."
    )
    return Settle(check=lambda _: text, finish=lambda _: text)


def renew_settle() -> Settle:
    return Settle(
        check=lambda ids: (
            f"get_allocation {_names(ids)} shows whether expires_at moved; "
            "renewing again does no harm."
        ),
        finish=lambda ids: f"get_allocation {_names(ids)} shows where it stands.",
    )


def failure_message(
    cause: str,
    writes: CommandWrites | None,
    *,
    may_be_committed: bool,
    settle: Settle,
) -> str:
    """The text of an error reply: `cause` (what went wrong), then what
    was written before it, what may have been, and how to settle that.

    `may_be_committed`: whether the save that failed (writes.failed) may
    have been committed anyway (store_errors.write_may_be_committed).
    """
    sentences = [_sentence(cause)]
    saved = writes.saved_allocations() if writes is not None else {}
    pools = writes.saved_pools() if writes is not None else []
    failed = writes.failed if writes is not None else None
    if saved or pools:
        done = [f"allocation {i} ({state})" for i, state in saved.items()]
        done += [f"the change to pool {p!r}" for p in pools if not saved]
        sentences.append(f"Saved before the failure: {', '.join(done)}.")
    if failed is not None and may_be_committed:
        doubtful = list(failed.allocations)
        if doubtful:
            what = f"allocation {_names(doubtful)}"
        else:
            changed = failed.changed_pools or tuple(failed.pools)
            what = "the change to pool " + ", ".join(repr(p) for p in changed)
        sentences.append(
            f"Whether {what} was saved is not known: the connection to the "
            "database broke while it was being committed."
        )
        sentences.append(settle.check(doubtful))
    elif saved or pools:
        sentences.append("Nothing more was written.")
        sentences.append(settle.finish(list(saved)))
    elif writes is not None and writes.committed:
        # Only bookkeeping of MCP server processes was saved.
        sentences.append("No allocation or pool was changed; it is safe to try again.")
    else:
        sentences.append(NOTHING_WRITTEN)
    return " ".join(sentences)


def _names(ids: list[str]) -> str:
    return ", ".join(ids) if ids else "it"


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."
