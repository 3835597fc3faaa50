"""Keep what a process loaded before serving out of the garbage collector's sweeps.

A node that has loaded its slice holds about 385,000 objects the collector tracks (torch, transformers and
the model family's code), nearly all of them alive until the process ends.  CPython's full collection walks
every one of them: 270-380 ms on an idle core of the 2-core development machine, longer on busy cores, with
the GIL held, so the event loop reads no frame and sends no ack meanwhile and the predecessor's ack deadline
(a few hundred ms) runs out on a healthy node.  That was the soak's false deaths (benchmarks/soak.py).
Moving what is loaded at start into the permanent generation (``gc.freeze``) leaves the collector only what
serving allocates: a full collection then takes well under a millisecond.  Cycles among the frozen objects
are never reclaimed, which costs nothing here: they live as long as the process.
"""

from __future__ import annotations

import gc


def freeze_loaded() -> int:
    """Collect what is garbage now, then freeze every surviving object; returns how many are frozen (what a
    node's ``ready`` event reports, so a run shows it was done)."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
