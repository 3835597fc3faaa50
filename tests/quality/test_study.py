"""The whole study on a tiny model: every set and metric lands in the table, figures and examples get written."""

import json

import numpy as np
import pandas as pd
import pytest

from quality import study
from quality.mmlu_data import MMLUDataError
from quality.skipsets import SetsFileError

from .conftest import mmlu_rows


@pytest.fixture(scope="module")
def gemma3(tiny):
    source, prepared = tiny("gemma3")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(study, "prepare", lambda name: prepared)  # the tiny model stands in for a bundled one
        yield source


def study_on(source, out, **overrides):
    options = dict(single=False, double=True, sets_file=None, metrics=["ppl", "kl", "top1", "mmlu"],
                   mmlu_data=None, shots=1, limit=None, out=out, progress=False, tokens=128, window=48)
    options.update(overrides)
    return study.run_skip_study(str(source), **options)


@pytest.fixture(scope="module")
def full_study(gemma3, tmp_path_factory):
    """Single and double skips, a sets file, every metric, 1-shot MMLU: run once for the tests below."""
    root = tmp_path_factory.mktemp("study")
    (root / "sets.txt").write_text("0,2,4\n")
    (root / "mmlu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mmlu_rows()))
    return study_on(gemma3, root / "out", sets_file=root / "sets.txt", mmlu_data=root / "mmlu.jsonl")


def test_every_skip_set_and_metric_is_in_the_table(full_study):
    table = pd.read_csv(full_study / "results.csv")
    assert len(table) == (1 + 6 + 15 + 1) * 4
    assert set(table.metric) == {"ppl", "kl", "top1", "mmlu"}
    full = table[table.skip_set == "none"].set_index("metric")
    assert full.loc["kl", "value"] == pytest.approx(0, abs=1e-6) and full.loc["top1", "value"] == 1.0
    assert full.delta.abs().max() < 1e-6 and full.p_value.isna().all()
    assert table[table.metric == "mmlu"].n.unique().tolist() == [6]  # 9 questions minus 1 exemplar per subject
    pairs = table[(table.metric == "ppl") & (table.n_skipped == 2)]
    assert (pairs.p_holm >= pairs.p_value).all() and pairs.p_holm.notna().all()
    assert table[table.metric.isin(["kl", "top1"])].p_value.isna().all()


def test_figures_examples_raw_data_and_run_record_are_written(full_study):
    for name in ["single_skips", "double_kl", "interaction_kl", "double_mmlu", "interaction_ppl"]:
        for suffix in (".png", ".pdf"):
            assert (full_study / f"{name}{suffix}").stat().st_size > 0
    record = json.loads((full_study / "run.json").read_text())
    assert record["skip_sets"] == 23 and record["layer_calls_per_input"] < record["layer_calls_without_reuse"]
    assert record["mmlu"]["exemplars"].endswith("excluded from scoring")
    assert (full_study / "examples.md").exists() and (full_study / "examples.csv").exists()
    raw = np.load(full_study / "raw.npz")
    assert raw["kl"].shape == (23, 128) and raw["loglik"].shape == (23, 6, 4)


def test_bridge_and_repeat_are_scored_on_the_same_data_and_compared_with_skipping(gemma3, tmp_path):
    (tmp_path / "mmlu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mmlu_rows()))
    out = study_on(gemma3, tmp_path / "out", single=True, double=False, mmlu_data=tmp_path / "mmlu.jsonl",
                   methods=["repeat", "bridge"])
    table = pd.read_csv(out / "results.csv")
    assert len(table) == (1 + 6 * 3) * 4, "the full model once, every single skip under three methods"
    assert table[table.skip_set == "none"].method.unique().tolist() == ["skip"]
    skipped, others = table[table.method == "skip"], table[table.method != "skip"]
    assert skipped.vs_skip.isna().all() and others[["vs_skip", "vs_skip_low", "vs_skip_p"]].notna().all().all()
    assert (others.vs_skip_low <= others.vs_skip).all() and (others.vs_skip <= others.vs_skip_high).all()
    assert (others.vs_skip_p_holm >= others.vs_skip_p).all()
    by = table.set_index(["metric", "method", "skip_set"])
    for method in ("bridge", "repeat"):  # vs_skip is the paired difference of the two rows' deltas
        for layer in map(str, range(6)):
            for metric in ("kl", "top1", "ppl"):
                assert by.loc[(metric, method, layer), "vs_skip"] == pytest.approx(
                    by.loc[(metric, method, layer), "delta"] - by.loc[(metric, "skip", layer), "delta"], abs=1e-9)
    assert by.loc[("kl", "repeat", "0"), "vs_skip"] == 0, "layer 0 has no layer before it: repeat is skip"
    assert by.loc[("kl", "bridge", "3"), "vs_skip"] != 0
    raw = np.load(out / "raw.npz")
    assert raw["bridge_kl"].shape == raw["kl"].shape == (7, 128) and raw["repeat_loglik"].shape == (7, 6, 4)
    assert json.loads((out / "run.json").read_text())["methods"] == ["skip", "repeat", "bridge"]


def test_proxies_alone_skip_mmlu_and_need_no_data(gemma3, tmp_path):
    out = study_on(gemma3, tmp_path / "out", metrics=["kl"], mmlu_data=tmp_path / "never-read.jsonl",
                   single=True, double=False)
    table = pd.read_csv(out / "results.csv")
    assert set(table.metric) == {"kl"} and len(table) == 7


class TestBadInputFailsBeforeTheModelLoads:
    @pytest.fixture(autouse=True)
    def no_model(self, monkeypatch):
        monkeypatch.setattr(study, "prepare", lambda name: pytest.fail("model loaded before input was checked"))

    def call(self, tmp_path, **overrides):
        options = dict(single=True, double=False, sets_file=None, metrics=["kl"], mmlu_data=None, shots=0,
                       limit=None, out=tmp_path / "out", progress=False)
        options.update(overrides)
        return study.run_skip_study("gemma3-270m", **options)

    def test_unknown_metric(self, tmp_path):
        with pytest.raises(ValueError, match="unknown metric 'acc'; choose from ppl, kl, top1, mmlu"):
            self.call(tmp_path, metrics=["kl", "acc"])

    def test_comma_separated_metrics_are_accepted(self):
        assert study.check_metrics(["ppl,KL", "top1"]) == ["ppl", "kl", "top1"]

    def test_missing_mmlu_data(self, tmp_path):
        with pytest.raises(MMLUDataError, match="does not exist"):
            self.call(tmp_path, metrics=["mmlu"], mmlu_data=tmp_path / "mmlu.jsonl")

    def test_bad_sets_file(self, tmp_path):
        (tmp_path / "sets.txt").write_text("3,three\n")
        with pytest.raises(SetsFileError, match="sets.txt:1"):
            self.call(tmp_path, sets_file=tmp_path / "sets.txt")

    def test_unknown_method(self, tmp_path):
        with pytest.raises(study.StudyError, match="unknown method 'heal'"):
            self.call(tmp_path, methods=["bridge,heal"])

    def test_missing_corpus(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="corpus file"):
            self.call(tmp_path, corpus=tmp_path / "corpus.txt")

    def test_negative_shots_and_zero_limit(self, tmp_path):
        with pytest.raises(ValueError, match="shots"):
            self.call(tmp_path, shots=-1)
        with pytest.raises(ValueError, match="limit"):
            self.call(tmp_path, limit=0)


def test_a_sets_file_naming_a_missing_layer_is_refused(gemma3, tmp_path):
    (tmp_path / "sets.txt").write_text("2\n6\n")
    with pytest.raises(SetsFileError, match="names layer 6, but the model has layers 0..5"):
        study_on(gemma3, tmp_path / "out", sets_file=tmp_path / "sets.txt")
