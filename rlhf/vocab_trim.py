"""Vocabulary trimming: a student whose output layer covers only the tokens its domain uses.

At half depth a SmolLM2 student still multiplies every hidden state by the tied 49k x 576 embedding matrix to get
its logits: 28M of its 81M parameters, read in full for every generated token. Most of that vocabulary (code,
other languages) never occurs in a preference dataset's prompts and answers. Trimming keeps the tokens that a
reference corpus actually uses, plus everything needed to still encode *any* text:

- every special/added token and the 256 byte-level base tokens, so no input is unencodable;
- every token of the corpus's tokenization, closed under the BPE merges that build it, so the corpus tokenizes
  exactly as before (a merge that fired on the corpus produced a token that is either kept or an intermediate of
  a kept one).

The result is a standard checkpoint: a smaller embedding (rows in the old id order, so the special tokens keep
their ids) and a standard fast tokenizer whose vocabulary and merges are the kept subset. Text outside the corpus
still encodes (into smaller pieces), but the model can no longer *emit* a dropped token: that is the cost, and the
distillation report measures it on held-out prompts (rlhf.distill_report, its `trimmed_vocab` section: the share of
the teacher's held-out tokens the trimmed student cannot emit, and how often its answer equals the untrimmed one's).
`trim` writes the trimmed checkpoint; `distill --trim-vocab` calls it through rlhf.distill_models.trim_student.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def byte_alphabet() -> set[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2's bytes_to_unicode)."""
    from tokenizers import pre_tokenizers

    return set(pre_tokenizers.ByteLevel.alphabet())


def _pair(merge: list[str] | str) -> tuple[str, str]:
    """A merge as (left, right): tokenizers writes them as ["a", "b"] now and as "a b" in older files."""
    a, b = merge if isinstance(merge, list) else merge.split(" ", 1)
    return a, b


def _merge_parts(spec: dict[str, Any]) -> dict[str, tuple[str, str]]:
    parts: dict[str, tuple[str, str]] = {}
    for m in spec["model"]["merges"]:
        a, b = _pair(m)
        parts.setdefault(a + b, (a, b))
    return parts


def kept_tokens(tokenizer, texts: list[str]) -> set[str]:
    """Token strings to keep so that `texts` tokenize exactly as with the full vocabulary, and any text encodes."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    if spec["model"]["type"] != "BPE":
        raise ValueError(f"vocabulary trimming handles BPE tokenizers, not {spec['model']['type']}")
    vocab = spec["model"]["vocab"]
    keep = {t["content"] for t in spec["added_tokens"]} | (byte_alphabet() & vocab.keys())
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        keep.update(tokenizer.convert_ids_to_tokens(ids))
    parts = _merge_parts(spec)
    stack = list(keep)
    while stack:  # closure: every intermediate of a kept merge is kept too
        tok = stack.pop()
        for p in parts.get(tok, ()):
            if p not in keep:
                keep.add(p)
                stack.append(p)
    return keep


def trim(model, tokenizer, texts: list[str], out_dir: str | Path) -> dict[str, Any]:
    """Write a trimmed copy of (model, tokenizer) to out_dir (both left untouched); return {kept, full, old_ids}."""
    import copy

    import torch
    from tokenizers import Tokenizer

    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    keep = kept_tokens(tokenizer, texts)
    id_of = {**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec["added_tokens"]}}
    old_ids = sorted(id_of[t] for t in keep if t in id_of)
    new_id = {old: new for new, old in enumerate(old_ids)}
    spec["model"]["vocab"] = {t: new_id[i] for t, i in spec["model"]["vocab"].items() if i in new_id}
    # A merge survives when both its parts and its result are kept.
    spec["model"]["merges"] = [m for m in spec["model"]["merges"] if {*_pair(m), "".join(_pair(m))} <= keep]
    for t in spec["added_tokens"]:
        t["id"] = new_id[t["id"]]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)  # config, chat template and special-token names; tokenizer.json replaced next
    Tokenizer.from_str(json.dumps(spec)).save(str(out / "tokenizer.json"))

    index = torch.tensor(old_ids, device=model.get_input_embeddings().weight.device)
    model = copy.deepcopy(model)
    old_in, old_out = model.get_input_embeddings(), model.get_output_embeddings()
    tied = old_out is not None and old_out.weight is old_in.weight
    new_in = torch.nn.Embedding(len(old_ids), old_in.weight.shape[1], dtype=old_in.weight.dtype, device=index.device)
    with torch.no_grad():
        new_in.weight.copy_(old_in.weight[index])
    model.set_input_embeddings(new_in)
    if old_out is not None:
        new_out = torch.nn.Linear(old_out.in_features, len(old_ids), bias=old_out.bias is not None,
                                  dtype=old_out.weight.dtype, device=index.device)  # fmt: skip
        if tied:
            new_out.weight = new_in.weight
        else:
            with torch.no_grad():
                new_out.weight.copy_(old_out.weight[index])
        if old_out.bias is not None:
            with torch.no_grad():
                new_out.bias.copy_(old_out.bias[index])
        model.set_output_embeddings(new_out)
    model.config.vocab_size = len(old_ids)
    for cfg in (model.config, model.generation_config):
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
            v = getattr(cfg, key, None)
            if v is not None:
                setattr(cfg, key, [new_id[i] for i in v] if isinstance(v, list) else new_id[v])
    model.save_pretrained(out)
    return {"kept": len(old_ids), "full": len(id_of), "old_ids": old_ids}
