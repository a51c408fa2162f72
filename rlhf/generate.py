"""`python -m annotate generate`: sample candidate responses from one or more models into a pool.

It lives in rlhf/ because it loads models: the labeling app and the data layer (annotate/) run without torch.

Each prompt gets N samples per model, the k-th drawn with the k-th (temperature, top_p) pair of a grid, so a
pool holds candidates of different quality and style from the same model. Every response's settings go into
its `meta`, so the audit can later relate preferences to how a candidate was made. Sampling is the project's one
generation loop (rlhf.sampling.generate: chat template, left-padded batches).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from annotate.errors import UsageError
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
        raise UsageError(f"--device: expected cpu, cuda or auto, got {device!r}")
    return device


def _with_id(p: dict[str, Any]) -> dict[str, Any]:
    messages = as_messages(p["prompt"])
    return {"prompt_id": p.get("prompt_id") or prompt_id_for(messages), "prompt": messages}


def _response_slugs(sources: list[str]) -> list[str]:
    """Short model names for response ids; two models with the same short name (e.g. two "checkpoint" dirs) still
    get distinct ones."""
    slugs = [_slug(s) for s in sources]
    return [s if slugs.count(s) == 1 else f"{s}{i}" for i, s in enumerate(slugs)]


def _check_counts(n: int, batch_size: int) -> None:
    if n < 1:
        raise UsageError(f"--n: expected at least 1, got {n}")
    if batch_size < 1:
        raise UsageError(f"--batch-size: expected at least 1, got {batch_size}")


def _pool_row(p: dict[str, Any], ids: list[int], tokenizer, *, source: str, slug: str, k: int, settings: dict) -> dict:
    """One pool row from a sampled answer (ids end with EOS when the model finished); its settings go in `meta`."""
    from rlhf.sampling import response_text

    finished = bool(ids) and ids[-1] == tokenizer.eos_token_id  # False: cut at max_new_tokens
    meta = {
        "kind": "model_sample",
        "model": source,
        "sample_index": k,
        "do_sample": True,
        **settings,
        "new_tokens": len(ids) - finished,
        "finished": finished,
        "chat_template": bool(tokenizer.chat_template),
    }
    return {
        "prompt_id": p["prompt_id"],
        "prompt": p["prompt"],
        "response_id": f"{p['prompt_id']}-{slug}-{k}",
        "response": response_text(tokenizer, ids),
        "source": source,
        "meta": json.dumps(meta, sort_keys=True),
    }


def _sample_model(
    model_name: str | None,
    prompts: list[dict[str, Any]],
    n: int,
    *,
    source: str,
    slug: str,
    sampling: list[tuple[float, float]],
    device: str,
    batch_size: int,
    max_new_tokens: int,
    seed: int,
    bar: Any,
) -> list[dict[str, Any]]:
    """`n` rows per prompt from one model, sample k at sampling[k % len(sampling)] (empty responses included)."""
    import torch

    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.sampling import generate

    tokenizer = load_tokenizer(model_name)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = load_causal_lm(model_name, dtype=dtype, device=device).eval()
    rows = []
    for k in range(n):
        temperature, top_p = sampling[k % len(sampling)]
        # Seeded per (sample, batch): a rerun with the same arguments gives the same pool.
        answers = generate(
            model, tokenizer, [p["prompt"] for p in prompts], max_new_tokens=max_new_tokens, batch_size=batch_size,
            temperature=temperature, top_p=top_p, eos_token_id=tokenizer.eos_token_id, seed=seed + 1000 * k,
            desc=None, on_batch=bar.update,
        )  # fmt: skip
        settings = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed}
        rows += [
            _pool_row(p, ids, tokenizer, source=source, slug=slug, k=k, settings=settings)
            for p, ids in zip(prompts, answers)
        ]
    return rows


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
    from tqdm.auto import tqdm

    _check_counts(n, batch_size)
    prompts = [_with_id(p) for p in prompts]
    models = models or [None]
    device = resolve_device(device)
    sources = [_source_name(m) for m in models]
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(models) * n * len(prompts), desc="generate", unit="resp", disable=not progress)
    for model_name, source, slug in zip(models, sources, _response_slugs(sources)):
        rows += _sample_model(
            model_name, prompts, n, source=source, slug=slug, sampling=sampling or DEFAULT_SAMPLING, device=device,
            batch_size=batch_size, max_new_tokens=max_new_tokens, seed=seed, bar=bar,
        )  # fmt: skip
    bar.close()
    kept = [r for r in rows if r["response"]]
    if len(kept) < len(rows):
        print(f"generate: dropped {len(rows) - len(kept)} empty responses", file=sys.stderr)
    return kept


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
    # The flags of the same names are generate_pool's keyword arguments, passed as they are.
    options = {k: getattr(args, k) for k in ("sampling", "device", "batch_size", "max_new_tokens", "seed")}
    rows = generate_pool(prompts, args.model, args.n, **options)
    if not rows:
        raise SchemaError(f"{args.prompts}: every generated response was empty; nothing to write")
    out = write_pool(rows, args.out)
    print(f"wrote {len(rows)} responses for {len(prompts)} prompts to {out}")
    return 0
