"""payload/collector.py: what a process loaded before serving stays out of the garbage collector's sweeps.

Found in the soak (benchmarks/soak.py): a node holding a loaded slice (torch, transformers: about 385,000
tracked objects) paused 270-380 ms for each full collection on an idle machine, longer on busy cores, with
the GIL held; its event loop then read no frame and sent no ack, and its predecessor declared it dead.
"""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import gc, json, sys
from payload.collector import freeze_loaded
from payload.prepare import prepare
from payload.slices import LayerSlice, ModelSpec
layers = LayerSlice.load(ModelSpec(prepare(sys.argv[1])), 0, 4)
before = len(gc.get_objects())
frozen = freeze_loaded()
print(json.dumps({"before": before, "frozen": frozen, "after": len(gc.get_objects())}))
"""


def test_a_loaded_slice_is_frozen_and_a_full_collection_sweeps_almost_nothing():
    done = subprocess.run([sys.executable, "-c", PROBE, "smollm2-135m-instruct"], capture_output=True, text=True,
                          timeout=300, check=True)
    counts = json.loads(done.stdout.splitlines()[-1])
    assert counts["before"] > 100_000, counts  # the loaded model family is what a sweep would walk
    assert counts["frozen"] > counts["before"] * 0.9, counts  # all but what was garbage already
    assert counts["after"] < counts["before"] // 1000, counts
