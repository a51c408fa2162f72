"""The one generation loop: prompts -> chat template -> left-padded batches -> `model.generate` -> new token ids.

Everything that samples from a causal LM goes through here: candidate pools (`annotate generate`,
rlhf/generate.py), teacher and student answers in distillation (rlhf/distill_models.py), `evaluate`'s answers and
PPO's rollouts (rlhf/ppo.py, which tokenises its own queries and calls sample_ids). Prompts are left-padded so every
continuation starts at one column (decoder-only models continue from the right edge). Greedy when temperature is 0;
otherwise plain sampling at `temperature` inside the nucleus `top_p`, with top-k off (transformers would otherwise
add top_k=50). A response ends at its first stop token (EOS), which it keeps; response_text turns ids into the text
every scorer reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Messages = list[dict[str, str]]


def render_prompt(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> str:
    """The prompt as the model sees it: its chat template with the assistant turn opened."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # No template (e.g. a base model): a plain transcript that ends where the answer should start.
    turns = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(turns) + "\nAssistant:"


def left_pad(batch: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad token id lists so generation continues from the right edge: input_ids, attention_mask (B, Lq)."""
    import torch

    width = max(len(x) for x in batch)
    ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in batch])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch])
    return {"input_ids": ids, "attention_mask": mask}


def stop_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The model's own EOS ids (its generation config may list several) and the tokenizer's."""
    eos = model.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [] if eos is None else [eos]
    return sorted(set(eos) | {tokenizer.eos_token_id} - {None})


def sample_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    min_new_tokens: int = 0,
    eos_token_id: int | list[int] | None = None,
) -> torch.Tensor:
    """New tokens (B, T) after left-padded prompts (B, Lq), padded with pad_token_id once a row has stopped.

    `eos_token_id`: where generation stops (None: the model's generation config decides)."""
    import torch

    sample = temperature > 0
    kw: dict = {"do_sample": sample, "temperature": temperature if sample else None}
    # None switches a warper off (transformers would otherwise take the model's generation-config values).
    kw |= {"top_p": top_p, "top_k": 0} if sample else {"top_p": None, "top_k": None}
    if min_new_tokens:
        kw["min_new_tokens"] = min_new_tokens
    if eos_token_id is not None:
        kw["eos_token_id"] = eos_token_id
    # no_grad, not inference_mode: PPO feeds these ids back into forward passes that build a graph.
    with torch.no_grad():
        seqs = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.pad_token_id,
            **kw,
        )
    return seqs[:, input_ids.shape[1] :]  # left padding puts every prompt's end at one column


def cut_at_stop(row: list[int], stop: Iterable[int]) -> list[int]:
    """A response's ids up to and including its first stop token (all of them when it has none)."""
    stop = set(stop)
    for i, t in enumerate(row):
        if t in stop:
            return row[: i + 1]
    return row


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Messages],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    temperature: float = 0.0,
    top_p: float = 1.0,
    min_new_tokens: int = 0,
    eos_token_id: int | list[int] | None = None,
    seed: int | None = None,
    desc: str | None = "generating",
    on_batch: Callable[[int], None] | None = None,
) -> list[list[int]]:
    """Answer token ids per prompt, each cut after its first stop token (kept). Greedy when temperature == 0.

    `eos_token_id`: the stop tokens (None: stop_ids, the model's and the tokenizer's EOS). With `min_new_tokens`
    every answer is kept whole (the speed benchmark times exactly that many tokens). `seed`: batch b is drawn after
    torch.manual_seed(seed + b), so a rerun gives the same answers whatever ran before. `on_batch(n)` is called with
    the number of prompts of each finished batch (a caller's own progress bar); `desc` names this loop's bar (None:
    no bar)."""
    import torch
    from tqdm.auto import tqdm

    tokenizer.padding_side = "left"
    model.eval()
    stop = eos_token_id if eos_token_id is not None else stop_ids(model, tokenizer) or None
    stop_set = set(stop) if isinstance(stop, list) else {stop} - {None}
    out: list[list[int]] = []
    starts = range(0, len(prompts), batch_size)
    for b, i in enumerate(tqdm(starts, desc=desc, leave=False, disable=desc is None)):
        batch = prompts[i : i + batch_size]
        texts = [render_prompt(tokenizer, p) for p in batch]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        if seed is not None:
            torch.manual_seed(seed + b)
        new = sample_ids(
            model, tokenizer, enc["input_ids"], enc["attention_mask"], max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, min_new_tokens=min_new_tokens, eos_token_id=stop,
        )  # fmt: skip
        out += [row if min_new_tokens else cut_at_stop(row, stop_set) for row in new.tolist()]
        if on_batch is not None:
            on_batch(len(batch))
    return out


def response_text(tokenizer: PreTrainedTokenizerBase, ids: list[int] | torch.Tensor) -> str:
    """A sampled response as the text the reward model scores: cut at the first EOS, special tokens dropped, stripped.

    PPO rollouts, RLOO completions, `evaluate` answers and pool candidates all go through this, so the same ids give
    the same text.
    """
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
