"""Load and run a contiguous slice of decoder layers, one KV cache per session.

A node builds the model skeleton on the ``meta`` device (no memory), then
materialises only its own layers from their per-layer safetensors files, so its
memory scales with its slice.  Running a slice mirrors the family's
``Model.forward`` (masks per layer type, rotary embeddings, decoder layers)
with two differences that matter when layers live on different nodes:

* position ids travel with the hidden states (a node's cache slot 0 is empty,
  so ``cache.get_seq_length()`` would lie), and
* masks are built with ``layer_idx`` set to the first layer of each type on
  this slice, so they are sized from a slot this node actually fills.

The code targets the transformers 5.24 layer API (``cache=`` keyword, no
``cache_position``); the version is pinned because that API changes often.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from payload.prepare import HEAD_FILE, layer_file, load_manifest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_of(name: str) -> torch.dtype:
    """Map a dtype name from a config file to torch, with a clear error."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}") from None


def _load_tensors(path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key).to(dtype) for key in handle.keys()}


def model_config(prepared: Path | str):
    """Config of a prepared model, with its family's transformers code imported (nothing built or run).

    The local testbed calls this before forking nodes, so each node skips those imports.
    """
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    config = AutoConfig.from_pretrained(prepared)
    MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]  # the lookup imports the modeling module
    return config


class ModelSpec:
    """Config-level facts about a prepared model, plus a weightless skeleton to take modules from."""

    def __init__(self, prepared: Path | str):
        from transformers import AutoModelForCausalLM

        self.prepared = Path(prepared)
        self.manifest = load_manifest(self.prepared)
        self.config = model_config(self.prepared)
        self.num_layers = int(self.config.num_hidden_layers)
        self.hidden_size = int(self.config.hidden_size)
        with torch.device("meta"):
            self._skeleton = AutoModelForCausalLM.from_config(self.config)
        rotary_cls = type(self._skeleton.model.rotary_emb)
        self.rotary = rotary_cls(config=self.config)
        self._rotary_takes_type = "layer_type" in inspect.signature(self.rotary.forward).parameters

    def layer_type(self, index: int) -> str:
        """Attention type of layer ``index``: ``full_attention`` or ``sliding_attention``."""
        types = getattr(self.config, "layer_types", None)
        if types:
            return types[index]
        if getattr(self.config, "sliding_window", None) and self.config.model_type == "mistral":
            return "sliding_attention"
        return "full_attention"

    def materialise(self, module: nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> nn.Module:
        """Move a skeleton module to CPU memory and fill it from ``tensors`` (keys under ``prefix``)."""
        module = module.to_empty(device="cpu")
        own = {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}
        module.load_state_dict(own, strict=True)
        # Non-persistent buffers are not in the weights and come out of to_empty() uninitialised.
        for sub in module.modules():
            if hasattr(sub, "scalar_embed_scale"):
                sub.embed_scale.fill_(sub.scalar_embed_scale)
        persistent = set(own)
        for name, _ in module.named_buffers():
            if name not in persistent and not name.endswith("embed_scale"):
                raise RuntimeError(f"{type(module).__name__} has a buffer {name!r} this loader cannot initialise")
        return module.eval()

    def load_layers(self, indices: list[int], dtype: torch.dtype) -> dict[int, nn.Module]:
        """Materialise decoder layers ``indices`` only, reading just their files."""
        layers = {}
        for index in indices:
            if not 0 <= index < self.num_layers:
                raise ValueError(f"layer {index} out of range: the model has {self.num_layers} layers")
            tensors = _load_tensors(self.prepared / layer_file(index), dtype)
            skeleton = self._skeleton.model.layers[index]
            layers[index] = self.materialise(skeleton, tensors, f"model.layers.{index}.").to(dtype)
        return layers

    def position_embeddings(self, hidden: torch.Tensor, position_ids: torch.Tensor, layer_type: str):
        """Rotary (cos, sin) for these positions; Gemma 3 has one rotary per layer type."""
        if self._rotary_takes_type:
            return self.rotary(hidden, position_ids, layer_type)
        return self.rotary(hidden, position_ids)

    def new_cache(self):
        """A fresh per-session KV cache whose slots are indexed by global layer index."""
        from transformers import DynamicCache

        return DynamicCache(config=self.config)


def make_mask(spec: ModelSpec, layer_type: str, hidden: torch.Tensor, cache, position_ids, layer_idx: int):
    """Causal (or sliding-window) mask sized from cache slot ``layer_idx``, which this slice owns."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    build = create_sliding_window_causal_mask if layer_type == "sliding_attention" else create_causal_mask
    return build(
        config=spec.config,
        inputs_embeds=hidden,
        attention_mask=None,
        cache=cache,
        position_ids=position_ids,
        layer_idx=layer_idx,
    )


@dataclass
class SessionCache:
    """One session's KV cache for one slice, with its own length bookkeeping.

    ``length`` counts positions this slice has cached.  Rolling back crops only
    this slice's layers (other slots of the DynamicCache are never touched: they
    may be uninitialised).  Sliding-window layers record their past so a re-sent
    step can be rolled back after the window is full; ``commit`` trims them once
    a step is known final.
    """

    cache: object
    layers: tuple[int, ...]
    length: int = 0

    @classmethod
    def new(cls, spec: ModelSpec, layers: tuple[int, ...]) -> "SessionCache":
        cache = spec.new_cache()
        for index in layers:
            slot = cache.layers[index]
            if hasattr(slot, "activate_past_recording"):
                slot.activate_past_recording()
        return cls(cache=cache, layers=layers)

    def rollback(self, positions: int) -> None:
        """Forget the last ``positions`` cached positions of this slice."""
        if positions <= 0:
            return
        if positions > self.length:
            raise ValueError(f"cannot roll back {positions} positions: only {self.length} cached")
        for index in self.layers:
            self.cache.layers[index].crop(-positions)
        self.length -= positions

    def commit(self) -> None:
        """Trim sliding-window layers back to their window: the last step is final."""
        for index in self.layers:
            slot = self.cache.layers[index]
            if getattr(slot, "is_initialized", False):
                slot.crop(0)


@dataclass
class LayerSlice:
    """Decoder layers ``[first, end)`` of a model, ready to run against a SessionCache."""

    spec: ModelSpec
    first: int
    end: int
    compute_dtype: torch.dtype = torch.float32
    layers: dict[int, nn.Module] = field(default_factory=dict)

    @classmethod
    def load(cls, spec: ModelSpec, first: int, end: int, compute_dtype: torch.dtype = torch.float32) -> "LayerSlice":
        if not 0 <= first < end <= spec.num_layers:
            raise ValueError(f"bad layer range [{first}, {end}) for a {spec.num_layers}-layer model")
        layers = spec.load_layers(list(range(first, end)), compute_dtype)
        return cls(spec=spec, first=first, end=end, compute_dtype=compute_dtype, layers=layers)

    @property
    def indices(self) -> tuple[int, ...]:
        return tuple(range(self.first, self.end))

    def new_cache(self) -> SessionCache:
        return SessionCache.new(self.spec, self.indices)

    @torch.inference_mode()
    def forward(self, hidden: torch.Tensor, position_ids: torch.Tensor, cache: SessionCache) -> torch.Tensor:
        """Apply the slice to ``hidden`` [1, T, H] at ``position_ids`` [1, T], appending T positions to ``cache``."""
        hidden = hidden.to(self.compute_dtype)
        first_of_type: dict[str, int] = {}
        for index in self.indices:
            first_of_type.setdefault(self.spec.layer_type(index), index)
        masks = {t: make_mask(self.spec, t, hidden, cache.cache, position_ids, i) for t, i in first_of_type.items()}
        rotary = {t: self.spec.position_embeddings(hidden, position_ids, t) for t in first_of_type}
        for index in self.indices:
            layer_type = self.spec.layer_type(index)
            hidden = self.layers[index](
                hidden,
                attention_mask=masks[layer_type],
                position_embeddings=rotary[layer_type],
                position_ids=position_ids,
                cache=cache.cache,
                use_cache=True,
            )
        cache.length += hidden.shape[1]
        return hidden


class Head:
    """The end-user node's share of the model: embeddings, final norm, output head."""

    def __init__(self, spec: ModelSpec, compute_dtype: torch.dtype = torch.float32):
        tensors = _load_tensors(spec.prepared / HEAD_FILE, compute_dtype)
        skeleton = spec._skeleton
        self.spec = spec
        self.compute_dtype = compute_dtype
        self.embed = spec.materialise(skeleton.model.embed_tokens, tensors, "model.embed_tokens.").to(compute_dtype)
        self.norm = spec.materialise(skeleton.model.norm, tensors, "model.norm.").to(compute_dtype)
        if "lm_head.weight" in tensors:
            self.lm_head_weight = tensors["lm_head.weight"]
        else:
            self.lm_head_weight = self.embed.weight  # tied embeddings
        self.softcap = getattr(spec.config, "final_logit_softcapping", None)

    @torch.inference_mode()
    def embed_ids(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids [1, T] -> hidden states [1, T, H] (Gemma's sqrt(H) scale lives inside embed_tokens)."""
        return self.embed(token_ids)

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final hidden state [1, T, H] -> logits [1, T, V], with Gemma's final soft-capping."""
        hidden = self.norm(hidden.to(self.compute_dtype))
        logits = torch.nn.functional.linear(hidden, self.lm_head_weight)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits
