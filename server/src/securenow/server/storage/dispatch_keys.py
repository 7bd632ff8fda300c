"""Redis keys of the dispatch streams (shared by the relay and the stream hub)."""

from __future__ import annotations

DISPATCH_GROUP = "cad"
# The relay reads every published entry into DISPATCH_GROUP under this consumer name,
# so the group's pending list holds exactly the unacknowledged events.
RELAY_CONSUMER = "relay"
# Present while Redis holds the dispatch streams; missing after Redis lost its data.
DISPATCH_EPOCH_KEY = "dispatch:epoch"


def dispatch_stream(department_id: str) -> str:
    return f"dispatch:{department_id}"


def event_id(seq: int) -> str:
    """The public event id of a department's seq-th event (also its stream entry id)."""
    return f"{seq}-0"


def seq_of(event_id_text: str) -> int | None:
    head, sep, tail = event_id_text.partition("-")
    if not head.isdigit() or (sep and tail != "0"):
        return None
    return int(head)
