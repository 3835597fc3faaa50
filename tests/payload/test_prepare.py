"""prepare: runs started together convert a model once, and each gets the complete prepared directory.

Two experiments (or two test workers) preparing the same model at once both converted it, and the second
rename failed on the directory the first had put in place.  Real processes, a real (tiny, random) model.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from payload.prepare import verify
from tests.conftest import _save_tiny

SCRIPT = """
import sys, time
from pathlib import Path
from payload.prepare import prepare
time.sleep(max(0.0, float(sys.argv[3]) - time.time()))  # all start converting at once
print(prepare(sys.argv[1], cache=Path(sys.argv[2]), progress=lambda m: print(m, file=sys.stderr)))
"""


def test_concurrent_prepares_convert_once_and_all_get_the_same_complete_directory(tmp_path):
    source = _save_tiny("llama", tmp_path / "tiny-llama")
    cache = tmp_path / "cache"
    start = time.time() + 8.0  # past every interpreter's start-up
    runs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(source), str(cache), str(start)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(run.wait(timeout=300), run.stdout.read().strip(), run.stderr.read()) for run in runs]
    assert [rc for rc, _, _ in results] == [0, 0, 0], [err[-2000:] for _, _, err in results]
    targets = {out for _, out, _ in results}
    assert len(targets) == 1, targets
    target = Path(targets.pop())
    assert verify(target) == [], "the prepared directory is complete"
    converted = sum("prepared " in err for _, _, err in results)
    assert converted == 1, f"{converted} of the 3 runs converted the model (one should, the others wait)"
    leftovers = [p.name for p in target.parent.iterdir() if p != target and not p.name.endswith(".lock")]
    assert leftovers == [], f"staging directories left behind: {leftovers}"
