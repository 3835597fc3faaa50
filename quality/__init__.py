"""Layer-skip quality study: how much does a model's output change when decoder layers are skipped?

When a JARVIS node fails, its decoder layers are skipped.  This package measures
the cost of that in one process, without a network: MMLU scored the way
lm-evaluation-harness scores it, and proxies against the full model on a text
corpus (perplexity, next-token KL divergence, top-1 agreement), with paired
statistics, figures and labelled example generations.

The entry point is :func:`quality.study.run_skip_study`.
"""
