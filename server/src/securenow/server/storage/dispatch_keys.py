"""Redis keys of the dispatch streams (shared by the relay and the stream hub)."""

from __future__ import annotations

DISPATCH_GROUP = "cad"
# The relay reads every published entry into DISPATCH_GROUP under this consumer name,
# so the group's pending list holds exactly the unacknowledged events.
RELAY_CONSUMER = "relay"
# Present while Redis holds the dispatch streams; missing after Redis lost its data.
DISPATCH_EPOCH_KEY = "dispatch:epoch"
# Notices of rewritten streams (reconciliation, rebuild), entries {department, from_seq}.
# A rewrite can put events back below where a hub is reading a stream live; hubs read
# this stream in the same XREAD and move that department's cursor back before from_seq.
DISPATCH_REWRITES = "dispatch:rewrites"
DISPATCH_REWRITES_MAXLEN = 1000
# Sequence numbers are bigint in PostgreSQL (dispatch_sequences) and at most 2**64 - 1
# in a Redis stream id; anything from here up is no event id this server issued.
MAX_SEQ = 2**63 - 1


def dispatch_stream(department_id: str) -> str:
    return f"dispatch:{department_id}"


def event_id(seq: int) -> str:
    """The public event id of a department's seq-th event (also its stream entry id)."""
    return f"{seq}-0"


def seq_of(event_id_text: str) -> int | None:
    """The sequence number of a client-supplied event id ("<seq>" or "<seq>-0"); None
    when it cannot be one (callers answer INVALID_ARGUMENT), never a value Redis or
    PostgreSQL would refuse."""
    head, sep, tail = event_id_text.partition("-")
    # isascii: str.isdigit also accepts '²' and other digits int() or Redis reject.
    if not (head.isascii() and head.isdigit()) or len(head) > 19 or (sep and tail != "0"):
        return None
    seq = int(head)
    return seq if seq <= MAX_SEQ else None
