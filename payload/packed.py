"""A weight packed once for products of a few rows at a time: batched decode's output head.

For 2-8 rows against Gemma 3's 262k x 640 head, MKL's plain product takes 110-133 ms on the development
machine's CPU (one thread), about what eight rows' memory traffic would cost one by one; the same weight
reordered once into oneDNN's blocked layout takes 34-53 ms (medians, side by side, ``benchmarks/head_product.py``).  The packed copy
costs the weight's size again (671 MB for that head in float32), so only a node that batches holds one.

Its results are its own: within 1e-5 of the plain product's, not bit-equal, and the same for any rows the
product is packed for.  Everything that must reproduce them (the consistency oracle replaying a batched head)
uses this same product.  Where this torch has no oneDNN, or it refuses the weight, the plain product serves.
"""

from __future__ import annotations

from typing import Callable

import torch

Product = Callable[[torch.Tensor], torch.Tensor]


def packed_product(weight: torch.Tensor) -> tuple[Product, bool]:
    """``x -> x @ weight.T`` for ``x`` of shape [..., in]; and whether it runs on a packed copy (False: the plain
    product, this torch cannot pack ``weight``)."""
    if torch.backends.mkldnn.is_available():
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), 8)
        except (RuntimeError, AttributeError):
            packed = None
        if packed is not None:
            return (lambda x: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")), True
    return (lambda x: torch.nn.functional.linear(x, weight)), False
