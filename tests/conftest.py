"""Shared fixtures: tiny random models built offline, and bundled models prepared once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


def _save_tiny(kind: str, directory: Path) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    torch.manual_seed(0)
    words = "the a cat dog sat on mat ran far and then home big small red blue one two three".split()
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator([" ".join(words)] * 4, trainers.WordLevelTrainer(special_tokens=["<unk>", "<bos>", "<eos>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>")
    vocab = fast.vocab_size
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(num_hidden_layers=6, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=vocab, eos_token_id=2, bos_token_id=1,
                          tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
    elif kind == "wide":
        # Few layers but a wide hidden state: a few hundred positions make a frame of megabytes (more than the
        # socket buffers hold), while compute stays quick.
        from transformers import LlamaConfig, LlamaForCausalLM

        cfg = LlamaConfig(num_hidden_layers=3, hidden_size=2048, intermediate_size=256, num_attention_heads=8,
                          num_key_value_heads=2, vocab_size=vocab, eos_token_id=2, bos_token_id=1,
                          tie_word_embeddings=False)
        model = LlamaForCausalLM(cfg)
    elif kind == "gemma":
        from transformers import GemmaConfig, GemmaForCausalLM

        cfg = GemmaConfig(num_hidden_layers=18, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                          num_key_value_heads=1, head_dim=16, vocab_size=vocab, eos_token_id=2, bos_token_id=1)
        model = GemmaForCausalLM(cfg)
    elif kind == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        cfg = Gemma3TextConfig(num_hidden_layers=6, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                               num_key_value_heads=1, head_dim=16, vocab_size=vocab, sliding_window=8,
                               layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
                               eos_token_id=2, bos_token_id=1)
        model = Gemma3ForCausalLM(cfg)
    elif kind == "gemma2":
        from transformers import Gemma2Config, Gemma2ForCausalLM

        cfg = Gemma2Config(num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=16, vocab_size=vocab, sliding_window=8,
                           eos_token_id=2, bos_token_id=1)
        model = Gemma2ForCausalLM(cfg)
    elif kind == "mistral":
        from transformers import MistralConfig, MistralForCausalLM

        cfg = MistralConfig(num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                            num_key_value_heads=2, vocab_size=vocab, sliding_window=8, eos_token_id=2,
                            bos_token_id=1)
        model = MistralForCausalLM(cfg)
    elif kind == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        cfg = Qwen2Config(num_hidden_layers=4, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                          num_key_value_heads=2, vocab_size=vocab, eos_token_id=2, bos_token_id=1)
        model = Qwen2ForCausalLM(cfg)
    else:
        raise ValueError(kind)
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory):
    """Factory: prepared directory of a tiny random model (llama, wide, gemma, gemma2, gemma3, mistral, qwen2)."""
    from payload.prepare import prepare

    made: dict[str, Path] = {}
    cache = tmp_path_factory.mktemp("cache")

    def make(kind: str) -> Path:
        if kind not in made:
            src = _save_tiny(kind, tmp_path_factory.mktemp(f"tiny-{kind}"))
            made[kind] = prepare(str(src), cache=cache, progress=lambda m: None)
        return made[kind]

    return make


@pytest.fixture(scope="session")
def bundled():
    """Factory: prepared directory of a bundled model, converted once into the user cache."""
    from payload.prepare import prepare

    return lambda name: prepare(name)
