"""`python -m annotate generate`: sample candidate responses from one or more models into a pool.

It lives in rlhf/ because it loads models: the labeling app and the data layer (annotate/) run without torch.

Each prompt gets N samples per model, the k-th drawn with the k-th (temperature, top_p) pair of a grid, so a
pool holds candidates of different quality and style from the same model. Every response's settings go into
its `meta`, so the audit can later relate preferences to how a candidate was made. Prompts are batched with
left padding (decoder-only models continue from the right edge) and rendered with the model's chat template.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from annotate.pool import read_prompts
from annotate.schema import SchemaError, as_messages, prompt_id_for

# (temperature, top_p): sample k uses entry k % len. From near-greedy to loose, so candidates differ.
DEFAULT_SAMPLING: list[tuple[float, float]] = [(0.3, 0.9), (0.7, 0.95), (1.0, 1.0), (1.3, 0.98)]


def _source_name(model: str | None) -> str:
    """What goes in a row's `source`: the Hub name for the bundled default, else the model as given."""
    from rlhf.models import DEFAULT_MODEL, DEFAULT_MODEL_NAME

    if model is None or str(model) in (DEFAULT_MODEL, "", DEFAULT_MODEL_NAME):
        return DEFAULT_MODEL_NAME
    return str(model).rstrip("/")


def _slug(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", source.split("/")[-1]).strip("-").lower() or "model"


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise SchemaError(f"--device: expected cpu, cuda or auto, got {device!r}")
    return device


def _render(tokenizer, messages: list[dict[str, str]]) -> str:
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # No template (e.g. a base model): a plain transcript that ends where the answer should start.
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(turns) + "\nAssistant:"


def _with_id(p: dict[str, Any]) -> dict[str, Any]:
    messages = as_messages(p["prompt"])
    return {"prompt_id": p.get("prompt_id") or prompt_id_for(messages), "prompt": messages}


def _generate_batch(model, tokenizer, texts: list[str], *, temperature: float, top_p: float, max_new_tokens: int):
    """Sample one continuation per text; returns [(response, n_tokens, finished_with_eos)]."""
    import torch

    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    with torch.inference_mode():
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=temperature,
            top_p=top_p,
            top_k=0,  # top_p alone decides the nucleus; transformers otherwise adds top_k=50
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    new = out[:, enc["input_ids"].shape[1] :]  # (B, T_new): left padding puts every prompt's end at one column
    results = []
    for row in new.tolist():
        finished = tokenizer.eos_token_id in row
        if finished:
            row = row[: row.index(tokenizer.eos_token_id)]
        text = tokenizer.decode(row, skip_special_tokens=True).strip()
        results.append((text, len(row), finished))
    return results


def generate_pool(
    prompts: list[dict[str, Any]],
    models: list[str | None] | None = None,
    n: int = 4,
    *,
    sampling: list[tuple[float, float]] | None = None,
    device: str = "auto",
    batch_size: int = 8,
    max_new_tokens: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Sample `n` responses per prompt from each model; returns pool rows (see annotate.schema.POOL_SCHEMA).

    `prompts`: [{prompt_id?, prompt (messages or text)}] as from read_prompts; a missing prompt_id is
    annotate.schema.prompt_id_for's, the id an import of the same prompt gets. `models`: ids or paths (None = the
    bundled SmolLM2). Sample k uses sampling[k % len(sampling)]. Empty responses are dropped and reported on stderr.
    """
    import torch
    from tqdm.auto import tqdm

    from rlhf.models import load_causal_lm, load_tokenizer

    if n < 1:
        raise SchemaError(f"--n: expected at least 1, got {n}")
    if batch_size < 1:
        raise SchemaError(f"--batch-size: expected at least 1, got {batch_size}")
    prompts = [_with_id(p) for p in prompts]
    sampling = sampling or DEFAULT_SAMPLING
    models = models or [None]
    device = resolve_device(device)
    sources = [_source_name(m) for m in models]
    slugs = [_slug(s) for s in sources]
    # Two models with the same short name (e.g. two "checkpoint" dirs) still get distinct response ids.
    slugs = [s if slugs.count(s) == 1 else f"{s}{i}" for i, s in enumerate(slugs)]
    batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
    rows: list[dict[str, Any]] = []
    dropped = 0
    bar = tqdm(total=len(models) * n * len(prompts), desc="generate", unit="resp", disable=not progress)
    for model_name, source, slug in zip(models, sources, slugs):
        tokenizer = load_tokenizer(model_name)
        tokenizer.padding_side = "left"
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = load_causal_lm(model_name, dtype=dtype, device=device).eval()
        for k in range(n):
            temperature, top_p = sampling[k % len(sampling)]
            for b, batch in enumerate(batches):
                # Seeded per (sample, batch): a rerun with the same arguments gives the same pool.
                torch.manual_seed(seed + 1000 * k + b)
                texts = [_render(tokenizer, p["prompt"]) for p in batch]
                outs = _generate_batch(
                    model, tokenizer, texts, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens
                )
                for p, (text, n_tokens, finished) in zip(batch, outs):
                    if not text:
                        dropped += 1
                        continue
                    meta = {
                        "kind": "model_sample",
                        "model": source,
                        "sample_index": k,
                        "do_sample": True,
                        "temperature": temperature,
                        "top_p": top_p,
                        "max_new_tokens": max_new_tokens,
                        "seed": seed,
                        "new_tokens": n_tokens,
                        "finished": finished,  # False: cut at max_new_tokens
                        "chat_template": bool(tokenizer.chat_template),
                    }
                    rows.append(
                        {
                            "prompt_id": p["prompt_id"],
                            "prompt": p["prompt"],
                            "response_id": f"{p['prompt_id']}-{slug}-{k}",
                            "response": text,
                            "source": source,
                            "meta": json.dumps(meta, sort_keys=True),
                        }
                    )
                bar.update(len(batch))
        del model
    bar.close()
    if dropped:
        print(f"generate: dropped {dropped} empty responses", file=sys.stderr)
    return rows


def _parse_sampling(value: str) -> tuple[float, float]:
    try:
        t, p = (float(x) for x in value.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected TEMPERATURE:TOP_P, e.g. 0.7:0.95, got {value!r}") from None
    if t <= 0 or not 0 < p <= 1:
        raise argparse.ArgumentTypeError(f"need temperature > 0 and 0 < top_p <= 1, got {value!r}")
    return t, p


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        action="append",
        help="Hub id or local checkpoint; repeat for several models (default: the bundled SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--prompts", required=True, help="JSONL of {prompt_id?, prompt: text or messages}, or text: one per line"
    )
    parser.add_argument("--n", type=int, default=4, help="samples per prompt per model (default: 4)")
    parser.add_argument("--out", required=True, help="pool to write (.jsonl or .parquet)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default: auto)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (default: 8)")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="length cap per response (default: 256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    grid = " ".join(f"{t}:{p}" for t, p in DEFAULT_SAMPLING)
    parser.add_argument(
        "--sampling",
        type=_parse_sampling,
        action="append",
        metavar="T:P",
        help=f"temperature:top_p for sample k (cycled); repeat to give a grid (default: {grid})",
    )


def main(args: argparse.Namespace) -> int:
    from annotate.pool import write_pool

    prompts = read_prompts(args.prompts)
    rows = generate_pool(
        prompts,
        args.model,
        args.n,
        sampling=args.sampling,
        device=args.device,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )
    if not rows:
        raise SchemaError(f"{args.prompts}: every generated response was empty; nothing to write")
    out = write_pool(rows, args.out)
    print(f"wrote {len(rows)} responses for {len(prompts)} prompts to {out}")
    return 0
