"""`python rlhf/train.py ppo`: PPO against a trained reward model (TRL 1.x has no PPOTrainer any more).

Follows Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO" (arXiv 2403.17031): a policy, a value
model initialised from the reward model, a frozen reference; rollouts sampled with `generate`, truncated after the
first EOS; a per-token KL penalty (fixed or Ziegler et al. 2019's adaptive coefficient); responses without EOS
penalised; optional reward whitening; GAE; whitened advantages; clipped policy and value losses. The math lives in
rlhf/ppo_core.py. Built on `accelerate`, so `accelerate launch rlhf/train.py ppo ...` runs data-parallel.

Policy and reward model must share the tokenizer: the value model (a copy of the reward model) reads the policy's
token ids. Held-out prompts are scored before and after training (eval.json: score_before, score, kl).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf.common import BaseConfig, append_metrics, finish_rl_run, start_run, use_cuda
from rlhf.config import parse_config

if TYPE_CHECKING:
    import torch


@dataclass
class PPOConfig(BaseConfig):
    """PPO against a reward model (N+ implementation details, Huang et al. 2024)."""

    output_dir: str = field(default="runs/ppo", metadata={"help": "where the policy, config and metrics go"})
    reward_model: str | None = field(default=None, metadata={"help": "trained reward model (rlhf/train.py reward)"})
    per_device_train_batch_size: int = field(default=16, metadata={"help": "rollouts per device per PPO update"})
    max_steps: int = field(default=-1, metadata={"help": "PPO updates (rollout batches); -1 = --num-train-epochs"})
    kl_coef: float = field(default=0.05, metadata={"help": "beta: per-token KL penalty against the reference"})
    adaptive_kl: bool = field(default=False, metadata={"help": "adapt beta towards --kl-target (Ziegler et al.)"})
    kl_target: float = field(default=6.0, metadata={"help": "target KL (nats per response) for --adaptive-kl"})
    kl_horizon: int = field(default=10000, metadata={"help": "horizon (rollouts) of the adaptive KL controller"})
    response_length: int = field(default=64, metadata={"help": "max new tokens per rollout"})
    temperature: float = field(default=0.7, metadata={"help": "sampling temperature (N+ detail: also scales logits)"})
    missing_eos_penalty: float = field(default=1.0, metadata={"help": "subtracted from scores of responses w/o EOS"})
    whiten_rewards: bool = field(default=False, metadata={"help": "whiten per-token rewards (mean kept)"})
    gamma: float = field(default=1.0, metadata={"help": "discount factor"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    cliprange: float = field(default=0.2, metadata={"help": "policy ratio clip epsilon"})
    cliprange_value: float = field(default=0.2, metadata={"help": "value clip epsilon"})
    vf_coef: float = field(default=0.1, metadata={"help": "weight of the value loss"})
    num_ppo_epochs: int = field(default=4, metadata={"help": "optimisation passes over each rollout batch"})
    num_mini_batches: int = field(default=1, metadata={"help": "mini-batches per rollout batch"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping"})
    forward_batch_size: int = field(default=32, metadata={"help": "rows per no-grad forward during rollouts"})
    eval_prompts: int = field(default=64, metadata={"help": "held-out prompts scored before and after training"})


def _disable_dropout(model: torch.nn.Module) -> None:
    """N+ detail: dropout off, so log-probs of the same tokens agree between rollout and update."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def _policy_and_value(policy, value_model):
    """One module holding both, so one optimizer and one `accelerator.prepare` cover them (as TRL's PPOv2 did)."""
    import torch

    class PolicyAndValue(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.policy, self.value_model = policy, value_model

        def forward(self, input_ids, attention_mask, position_ids):
            kw = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)
            logits = self.policy(**kw).logits  # (B, L, V)
            backbone = getattr(self.value_model, self.value_model.base_model_prefix)
            hidden = backbone(**kw).last_hidden_state  # (B, L, H)
            return logits, self.value_model.score(hidden).squeeze(-1)  # (B, L)

    return PolicyAndValue()


def load_models(cfg: PPOConfig, device) -> tuple[Any, Any, Any, Any, Any]:
    """(tokenizer, policy, reference, reward model, value model); the reference and reward model are frozen."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlhf.models import load_tokenizer, resolve_model
    from rlhf.reward import load_reward_model

    tok = load_tokenizer(cfg.model)
    reward_tok = load_tokenizer(cfg.reward_model)
    if tok.get_vocab() != reward_tok.get_vocab():
        raise ValueError(
            f"--reward-model {cfg.reward_model} uses a different tokenizer than --model {cfg.model}; PPO's value "
            "model reads the policy's tokens, so train the reward model from the same base (rlhf/train.py reward)"
        )
    path = resolve_model(cfg.model)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval().requires_grad_(False)
    reward = load_reward_model(cfg.reward_model, tok).to(device).eval().requires_grad_(False)
    value = load_reward_model(cfg.reward_model, tok)  # N+ detail: value model initialised from the reward model
    for m in (policy, ref, reward, value):
        _disable_dropout(m)
    return tok, policy, ref, reward, value


def encode_prompts(prompts: list, tok, max_prompt_tokens: int, name: str) -> list[list[int]]:
    """Chat-template each prompt; drop (and count) those longer than max_prompt_tokens rather than cut them."""
    ids = [
        tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        for p in prompts
    ]
    kept = [x for x in ids if len(x) <= max_prompt_tokens]
    if len(kept) < len(ids):
        print(f"[ppo] {name}: dropped {len(ids) - len(kept)} of {len(ids)} prompts over {max_prompt_tokens} tokens")
    if not kept:
        raise ValueError(
            f"{name}: every prompt is longer than {max_prompt_tokens} tokens (--max-length minus --response-length)"
        )
    return kept


def left_pad(batch: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad queries so generation continues from the right edge: input_ids, attention_mask (B, Lq)."""
    import torch

    width = max(len(x) for x in batch)
    ids = torch.tensor([[pad_id] * (width - len(x)) + x for x in batch])
    mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch])
    return {"input_ids": ids, "attention_mask": mask}


def _chunks(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def rollout(model, ref, reward, queries: dict, cfg: PPOConfig, tok) -> dict[str, torch.Tensor]:
    """Sample responses and everything PPO needs about them, without gradients.

    queries: input_ids, attention_mask (B, Lq), left-padded. Returns tensors over the T response tokens.
    """
    import torch

    from rlhf import ppo_core as core

    q, qmask = queries["input_ids"], queries["attention_mask"]
    Lq = q.shape[1]
    with torch.no_grad():
        seqs = model.policy.generate(
            input_ids=q, attention_mask=qmask, max_new_tokens=cfg.response_length, do_sample=True,
            temperature=cfg.temperature, top_k=0, top_p=1.0, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )  # fmt: skip
        responses = seqs[:, Lq:]  # (B, T)
        mask, last, has_eos = core.response_mask(responses, tok.eos_token_id)  # N+: truncate after first EOS
        responses = torch.where(mask.bool(), responses, tok.pad_token_id)
        attn = torch.cat([qmask, mask.long()], 1)  # (B, Lq + T)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)  # N+ detail: position ids skip the left padding
        qr = torch.cat([q, responses], 1)
        parts: dict[str, list[torch.Tensor]] = {"logprobs": [], "ref_logprobs": [], "values": [], "scores": []}
        for sl in _chunks(len(q), cfg.forward_batch_size):
            kw = dict(input_ids=qr[sl], attention_mask=attn[sl], position_ids=pos[sl])
            logits, values = model(**kw)  # (b, L, V), (b, L)
            # The token at position t is predicted by the logits at t-1: response logits are [Lq-1, L-1).
            parts["logprobs"].append(core.logprobs_of(logits[:, Lq - 1 : -1], responses[sl], cfg.temperature))
            parts["values"].append(values[:, Lq - 1 : -1])
            ref_logits = ref(**kw).logits
            parts["ref_logprobs"].append(core.logprobs_of(ref_logits[:, Lq - 1 : -1], responses[sl], cfg.temperature))
            parts["scores"].append(reward(**kw).logits[:, 0].float())  # the head reads the last non-pad token
        out = {k: torch.cat(v) for k, v in parts.items()}
    invalid = ~mask.bool()
    out["logprobs"] = out["logprobs"].masked_fill(invalid, core.INVALID_LOGPROB)
    out["ref_logprobs"] = out["ref_logprobs"].masked_fill(invalid, core.INVALID_LOGPROB)
    out["values"] = out["values"] * mask
    out.update(query_responses=qr, attention_mask=attn, position_ids=pos, responses=responses, mask=mask)
    out.update(last=last, has_eos=has_eos, Lq=torch.tensor(Lq))
    return out


def advantages(batch: dict[str, torch.Tensor], cfg: PPOConfig, kl_coef: float) -> dict[str, torch.Tensor]:
    """Scores -> KL-penalised per-token rewards -> GAE advantages (whitened) and value targets."""
    from rlhf import ppo_core as core

    mask = batch["mask"]
    scores = core.apply_eos_penalty(batch["scores"], batch["has_eos"], cfg.missing_eos_penalty)  # (B,)
    kl = core.per_token_kl(batch["logprobs"], batch["ref_logprobs"], mask)  # (B, T)
    rewards = core.kl_penalized_rewards(scores, kl, batch["last"], kl_coef)  # (B, T)
    if cfg.whiten_rewards:
        rewards = core.whiten(rewards, mask, shift_mean=False)
    adv, returns = core.gae(rewards, batch["values"], mask, cfg.gamma, cfg.lam)
    return {"advantages": core.whiten(adv, mask), "returns": returns, "kl": kl, "penalised_scores": scores}


def ppo_update(accelerator, model, optimizer, batch: dict, cfg: PPOConfig) -> dict[str, float]:
    """num_ppo_epochs passes of mini-batch (micro-batched by gradient accumulation) clipped PPO updates."""
    import torch

    from rlhf import ppo_core as core

    B, Lq = len(batch["responses"]), int(batch["Lq"])
    mb = max(1, B // cfg.num_mini_batches)
    micro = max(1, mb // cfg.gradient_accumulation_steps)
    stats: dict[str, list[float]] = {"loss/policy": [], "loss/value": [], "clipfrac/policy": [], "clipfrac/value": []}
    for _ in range(cfg.num_ppo_epochs):
        perm = torch.randperm(B, device=batch["responses"].device)
        for start in range(0, B, micro):
            idx = perm[start : start + micro]
            with accelerator.accumulate(model):
                logits, values = model(
                    input_ids=batch["query_responses"][idx],
                    attention_mask=batch["attention_mask"][idx],
                    position_ids=batch["position_ids"][idx],
                )
                mask = batch["mask"][idx]
                logprobs = core.logprobs_of(logits[:, Lq - 1 : -1], batch["responses"][idx], cfg.temperature)
                logprobs = logprobs.masked_fill(~mask.bool(), core.INVALID_LOGPROB)
                pg, pg_clip = core.policy_loss(
                    logprobs, batch["logprobs"][idx], batch["advantages"][idx], mask, cfg.cliprange
                )
                vf, vf_clip = core.value_loss(
                    values[:, Lq - 1 : -1], batch["values"][idx], batch["returns"][idx], mask, cfg.cliprange_value
                )
                accelerator.backward(pg + cfg.vf_coef * vf)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            for k, v in zip(stats, (pg, vf, pg_clip, vf_clip)):
                stats[k].append(v.item())
    return {k: sum(v) / len(v) for k, v in stats.items()}


def heldout(model, ref, reward, prompts: list[list[int]], cfg: PPOConfig, tok, device) -> dict[str, float]:
    """Mean reward-model score, KL to the reference (nats per response) and length on held-out prompts.

    Sampled as in training, from a fixed seed, so the numbers before and after training are comparable.
    """
    import torch

    torch.manual_seed(cfg.seed)
    scores, kls, lengths, eos = [], [], [], []
    for sl in _chunks(len(prompts), cfg.forward_batch_size):
        queries = {k: v.to(device) for k, v in left_pad(prompts[sl], tok.pad_token_id).items()}
        out = rollout(model, ref, reward, queries, cfg, tok)
        scores += out["scores"].tolist()
        kls += ((out["logprobs"] - out["ref_logprobs"]) * out["mask"]).sum(1).tolist()
        lengths += out["mask"].sum(1).tolist()
        eos += out["has_eos"].float().tolist()
    n = len(scores)
    return {"score": sum(scores) / n, "kl": sum(kls) / n, "length": sum(lengths) / n, "eos_rate": sum(eos) / n}


def _prompt_batches(prompts: list[list[int]], batch_size: int, seed: int):
    """Endless shuffled batches of prompts (reshuffled every pass)."""
    import random

    rng = random.Random(seed)
    while True:
        order = list(range(len(prompts)))
        rng.shuffle(order)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield [prompts[j] for j in order[i : i + batch_size]]


def _step_metrics(accelerator, batch: dict, adv: dict, losses: dict, kl_coef: float) -> dict[str, float]:
    mask = batch["mask"]
    local = {
        "score": batch["scores"].mean(),
        "kl": adv["kl"].sum(1).mean(),  # nats per response, k1 estimate
        "length": mask.sum(1).mean(),
        "eos_rate": batch["has_eos"].float().mean(),
    }
    # Average over processes so every rank logs (and adapts beta with) the same numbers.
    out = {k: accelerator.reduce(v.detach().float(), "mean").item() for k, v in local.items()}
    return {**out, **losses, "kl_coef": kl_coef}


def make_accelerator(cfg: PPOConfig):
    """An Accelerator for this device (bf16 where supported) with --report-to wired to its trackers."""
    import torch
    from accelerate import Accelerator

    cuda = use_cuda(cfg)
    bf16 = cfg.bf16 if cfg.bf16 is not None else bool(cuda and torch.cuda.is_bf16_supported())
    trackers = [t for t in cfg.report_to.split(",") if t and t != "none"]
    accelerator = Accelerator(
        cpu=not cuda,
        mixed_precision="bf16" if bf16 else "no",
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=trackers or None,  # tensorboard, wandb, ... through accelerate's trackers
        project_dir=cfg.output_dir,
    )
    if trackers:
        accelerator.init_trackers("ppo", config=dataclasses.asdict(cfg))
    return accelerator


def prompt_ids(cfg: PPOConfig, tok) -> tuple[list[list[int]], list[list[int]]]:
    """(train, held-out) prompt token ids; prompts that leave no room for --response-length are dropped."""
    from rlhf.data import heldout_path, load_prompts, split_prompts

    eval_path = heldout_path(cfg.data, cfg.eval_data)
    train_prompts, test_prompts = split_prompts(load_prompts(cfg.data), eval_path, cfg.test_fraction, cfg.seed)
    max_prompt = cfg.max_length - cfg.response_length
    train_ids = encode_prompts(train_prompts, tok, max_prompt, "train")
    return train_ids, encode_prompts(test_prompts, tok, max_prompt, "held-out")[: cfg.eval_prompts]


def train(cfg: PPOConfig, out_dir: Path) -> dict[str, Any]:
    import torch
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from rlhf import ppo_core as core

    accelerator = make_accelerator(cfg)
    set_seed(cfg.seed)
    tok, policy, ref, reward, value = load_models(cfg, accelerator.device)
    tok.padding_side = "left"
    train_ids, test_ids = prompt_ids(cfg, tok)
    B = cfg.per_device_train_batch_size
    if len(train_ids) < B:
        raise ValueError(f"{len(train_ids)} training prompts is fewer than --per-device-train-batch-size {B}")
    steps = cfg.max_steps
    if steps < 0:
        steps = max(1, math.ceil(cfg.num_train_epochs * len(train_ids) / (B * accelerator.num_processes)))
    model = _policy_and_value(policy, value)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate or 3e-6, eps=1e-5)  # N+: eps 1e-5
    # N+ detail: learning rate annealed linearly to 0 over the PPO steps. Not passed to prepare(), which would step
    # it once per process.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: max(0.0, 1.0 - i / steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    before = heldout(unwrapped, ref, reward, test_ids, cfg, tok, accelerator.device)
    set_seed(cfg.seed + accelerator.process_index)  # different rollouts on each rank
    kl_ctl = (
        core.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon)
        if cfg.adaptive_kl
        else core.FixedKLController(cfg.kl_coef)
    )
    batches = _prompt_batches(train_ids, B, cfg.seed + accelerator.process_index)
    for step in tqdm(range(1, steps + 1), desc="ppo", disable=not accelerator.is_main_process):
        unwrapped.eval()
        queries = {k: v.to(accelerator.device) for k, v in left_pad(next(batches), tok.pad_token_id).items()}
        batch = rollout(unwrapped, ref, reward, queries, cfg, tok)
        adv = advantages(batch, cfg, kl_ctl.value)
        batch.update(advantages=adv["advantages"], returns=adv["returns"])
        unwrapped.train()
        losses = ppo_update(accelerator, model, optimizer, batch, cfg)
        scheduler.step()
        metrics = _step_metrics(accelerator, batch, adv, losses, kl_ctl.value)
        kl_ctl.update(metrics["kl"], B * accelerator.num_processes)
        if accelerator.is_main_process and (step % cfg.logging_steps == 0 or step in (1, steps)):
            append_metrics(out_dir, {"step": step, "lr": scheduler.get_last_lr()[0], **metrics})
        accelerator.log(metrics, step=step)
    unwrapped.eval()
    after = heldout(unwrapped, ref, reward, test_ids, cfg, tok, accelerator.device)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped.policy.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    accelerator.end_training()  # finishes trackers; destroys the process group, so it comes last
    results = {f"{k}_before": v for k, v in before.items()} | after
    return results | {"steps": steps, "heldout_prompts": len(test_ids), "final_kl_coef": kl_ctl.value}


def main(argv: list[str] | None = None) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cfg = parse_config(PPOConfig, argv, prog="train.py ppo")
    if not cfg.reward_model:
        raise SystemExit("error: --reward-model is required (train one with `rlhf/train.py reward`)")
    out = start_run(cfg)
    finish_rl_run(out, cfg, "ppo", train(cfg, out), "PPO (N+ implementation details, Huang et al. 2024)")
    return 0
