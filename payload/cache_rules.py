"""What a layer node does with a DATA frame, given what it has cached: pure rules, no I/O, no torch.

One authority (the user node) stamps every attempt of a step with a new epoch,
and every node keeps one KV cache per session and slice.  The rules that keep
those caches consistent whatever the timing of a fault:

* a frame whose epoch is below the highest epoch seen for the session is
  stale (an attempt the user node has given up): dropped;
* a frame starting at position 0 starts the slice's cache afresh (a prefill,
  or a replay that rebuilds it from history);
* a frame starting below the cache length is a re-sent step: the cache (and
  the history sent downstream) roll back to its first position, then it is
  computed again;
* a frame starting exactly at the cache length extends it;
* a frame starting beyond the cache length, or at a later position of a
  session this node has no cache for, would leave a gap: refused.

``node.py`` applies the decision; the rules are tested here on plain data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(enum.Enum):
    DROP_STALE = "stale"
    REFUSE_GAP = "gap"
    START = "start"
    ROLLBACK = "rollback"
    EXTEND = "extend"


@dataclass(frozen=True)
class Decision:
    action: Action
    rollback: int = 0  # positions to forget first (ROLLBACK only)
    reason: str = ""  # why, for DROP_STALE and REFUSE_GAP


def admit(pos_start: int, has_cache: bool) -> str | None:
    """Why a frame is refused before it is acked (None: accept it).

    A step at a later position of a session this node holds no cache for cannot
    be served (the node restarted, or the session ended here): the sender is
    told at once, in the ack's place, rather than after a compute.
    """
    if pos_start > 0 and not has_cache:
        return f"unknown session (no cache for a step at position {pos_start})"
    return None


def decide(*, epoch: int, pos_start: int, session_epoch: int, cached: int | None) -> Decision:
    """The action for a frame of ``epoch`` starting at ``pos_start``.

    ``session_epoch`` is the highest epoch this node has seen for the session;
    ``cached`` the number of positions its cache of the frame's slice holds
    (None: no cache for that slice yet).
    """
    if epoch < session_epoch:
        return Decision(Action.DROP_STALE, reason=f"epoch {epoch} is older than the session's {session_epoch}")
    if pos_start == 0:
        return Decision(Action.START)
    if cached is None:
        return Decision(Action.REFUSE_GAP, reason=f"gap: no cache, step starts at position {pos_start}")
    if pos_start < cached:
        return Decision(Action.ROLLBACK, rollback=cached - pos_start)
    if pos_start > cached:
        return Decision(Action.REFUSE_GAP, reason=f"gap: cache has {cached} positions, step starts at {pos_start}")
    return Decision(Action.EXTEND)
