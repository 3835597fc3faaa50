"""The study on the real bundled SmolLM2 at a tiny limit: the critical first layer stands out."""

import pandas as pd
import pytest

from quality.study import run_skip_study


@pytest.mark.slow
def test_smollm2_single_skips_find_the_first_layer_critical(tmp_path):
    out = run_skip_study("smollm2-135m-instruct", single=True, double=False, sets_file=None,
                         metrics=["ppl", "kl", "top1", "mmlu"], mmlu_data=None, shots=0, limit=4,
                         out=tmp_path, progress=False, tokens=96, window=96)
    table = pd.read_csv(out / "results.csv")
    assert len(table) == 31 * 4
    kl = table[table.metric == "kl"].set_index("skip_set").value
    assert kl["none"] == 0 and kl["0"] > 5 * kl.drop(["none", "0"]).median()
    assert table[(table.metric == "mmlu")].n.unique().tolist() == [4]
    assert "critical" in (out / "examples.csv").read_text()
