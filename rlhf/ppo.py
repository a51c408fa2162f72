"""`python rlhf/train.py ppo`: PPO against a trained reward model (TRL 1.x has no PPOTrainer any more).

Follows Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO" (arXiv 2403.17031): a policy, a value
model initialised from the reward model, a frozen reference; rollouts sampled with `generate`, truncated after the
first EOS; rewards shifted so the reference policy's samples score 0 on average; a per-token KL penalty (fixed or
Ziegler et al. 2019's adaptive coefficient); responses without EOS penalised; optional reward whitening; GAE;
whitened advantages; clipped policy and value losses. The math lives in rlhf/ppo_core.py. Built on `accelerate`, so
`accelerate launch rlhf/train.py ppo ...` runs data-parallel.

Scores: each rollout is decoded to text (cut at its first EOS) and scored with (prompt messages, text) by
rlhf.reward.score, the path reward training's evaluation, RLOO and `evaluate` use: the chat-templated conversation,
read at its last token. Held-out "score" is therefore the number `evaluate` would give the same answers.
Values: the value model (a copy of the reward model, so policy and reward model must share the tokenizer) reads the
policy's own ids (left-padded query + response, position ids skipping the padding). V_t is its head applied to the
hidden state of the last token before response token t, at every position, never picked by pad id. At
initialisation the value of the final prefix is close to, not equal to, the score: the score's conversation also
has the template's closing tokens; the value head only starts from the reward head (N+ detail).
Held-out prompts are scored before and after training (eval.json: score_before, score, kl).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rlhf.common import BaseArgs, append_metrics, finish_rl_run, say_plan, start_run, use_cuda
from rlhf.config import parse_config
from rlhf.preflight import preflight
from rlhf.reward_heads import ObjectiveArgs, objective_record

if TYPE_CHECKING:
    import torch

DEFAULT_LR = 3e-6  # when --learning-rate is unset
# What ppo, rloo (and grpo) cannot run without, checked by rlhf/preflight.py before anything loads.
REQUIRED = {"reward_model": "train one with `rlhf/train.py reward`", "data": "an export, a pool or a prompts file"}


@dataclass
class PPOArgs(ObjectiveArgs, BaseArgs):
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
    reward_norm_prompts: int = field(
        default=256,
        metadata={"help": "training prompts whose reference samples set the reward shift (N+ detail); 0 = no shift"},
    )


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
            kw = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
            logits = self.policy(**kw).logits  # (B, L, V)
            backbone = getattr(self.value_model, self.value_model.base_model_prefix)
            hidden = backbone(**kw).last_hidden_state  # (B, L, H)
            return logits, self.value_model.score(hidden).squeeze(-1)  # (B, L)

    return PolicyAndValue()


def load_models(cfg: PPOArgs, device) -> tuple[Any, Any, Any, Any, Any, Any]:
    """(tokenizer, reward tokenizer, policy, reference, reward model, value model); reference and reward are frozen."""
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
    reward = load_reward_model(cfg.reward_model, reward_tok, objective=cfg.objective)
    reward = reward.to(device).eval().requires_grad_(False)
    # N+ detail: value model initialised from the reward model (a multi-head one's objective-weighted head)
    value = load_reward_model(cfg.reward_model, tok, objective=cfg.objective)
    for m in (policy, ref, reward, value):
        _disable_dropout(m)
    if cfg.gradient_checkpointing:  # recompute activations in the update's backward; rollouts run in eval mode
        kw = {"use_reentrant": False}
        for m in (policy, value):  # transformers 5 renamed it; 4.x has only the old name
            if hasattr(m, "activation_checkpointing_enable"):
                m.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
            else:
                m.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
    return tok, reward_tok, policy, ref, reward, value


class Query(NamedTuple):
    """A prompt as messages (what the reward model scores) and as the policy's chat-templated ids (what it sees)."""

    messages: list[dict[str, str]]
    ids: list[int]


def encode_prompts(prompts: list, tok, max_prompt_tokens: int, name: str) -> list[Query]:
    """Chat-template each prompt; drop (and count) those longer than max_prompt_tokens rather than cut them."""
    ids = [
        tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        for p in prompts
    ]
    kept = [Query(p, x) for p, x in zip(prompts, ids) if len(x) <= max_prompt_tokens]
    if len(kept) < len(ids):
        print(f"[ppo] {name}: dropped {len(ids) - len(kept)} of {len(ids)} prompts over {max_prompt_tokens} tokens")
    if not kept:
        raise ValueError(
            f"{name}: every prompt is longer than {max_prompt_tokens} tokens (--max-length minus --response-length)"
        )
    return kept


def _chunks(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def sample(policy, queries: list[Query], cfg: PPOArgs, tok) -> dict[str, torch.Tensor]:
    """Sampled responses (B, T), padded after their first EOS (N+ detail), with the left-padded queries (B, Lq)."""
    import torch

    from rlhf import ppo_core as core
    from rlhf.sampling import left_pad, sample_ids

    device = next(policy.parameters()).device
    padded = left_pad([x.ids for x in queries], tok.pad_token_id)
    q, qmask = padded["input_ids"].to(device), padded["attention_mask"].to(device)
    # (B, T), from the project's one generation call on PPO's own query ids: --temperature, no top-k/top-p.
    responses = sample_ids(
        policy, tok, q, qmask, max_new_tokens=cfg.response_length, temperature=cfg.temperature,
        eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    mask, last, has_eos = core.response_mask(responses, tok.eos_token_id)  # N+: truncate after first EOS
    responses = torch.where(mask.bool(), responses, tok.pad_token_id)
    return {"queries": q, "query_mask": qmask, "responses": responses, "mask": mask, "last": last, "has_eos": has_eos}


def score_responses(reward, reward_tok, tok, messages: list, responses: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Reward-model score of each rollout (B, T) -> (B,): decoded to text and scored as the conversation
    (prompt, text) by rlhf.reward.score, as reward evaluation, RLOO and `evaluate` score answers."""
    import torch

    from rlhf.reward import score
    from rlhf.sampling import response_text

    texts = [response_text(tok, r) for r in responses]
    return torch.tensor(score(reward, reward_tok, messages, texts, batch_size), device=responses.device)


def rollout(model, ref, reward, reward_tok, queries: list[Query], cfg: PPOArgs, tok) -> dict[str, torch.Tensor]:
    """Sample responses and everything PPO needs about them, without gradients. Tensors over the T response tokens."""
    import torch

    from rlhf import ppo_core as core

    s = sample(model.policy, queries, cfg, tok)
    q, responses, mask = s["queries"], s["responses"], s["mask"]
    Lq = q.shape[1]
    attn = torch.cat([s["query_mask"], mask.long()], 1)  # (B, Lq + T)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)  # N+ detail: position ids skip the left padding
    qr = torch.cat([q, responses], 1)
    parts: dict[str, list[torch.Tensor]] = {"logprobs": [], "ref_logprobs": [], "values": []}
    with torch.no_grad():
        for sl in _chunks(len(q), cfg.forward_batch_size):
            kw = dict(input_ids=qr[sl], attention_mask=attn[sl], position_ids=pos[sl])
            logits, values = model(**kw)  # (b, L, V), (b, L)
            # The token at position t is predicted by the logits at t-1: response logits are [Lq-1, L-1).
            parts["logprobs"].append(core.logprobs_of(logits[:, Lq - 1 : -1], responses[sl], cfg.temperature))
            parts["values"].append(values[:, Lq - 1 : -1])
            ref_logits = ref(**kw, use_cache=False).logits
            parts["ref_logprobs"].append(core.logprobs_of(ref_logits[:, Lq - 1 : -1], responses[sl], cfg.temperature))
    out = {k: torch.cat(v) for k, v in parts.items()}
    out["scores"] = score_responses(
        reward, reward_tok, tok, [x.messages for x in queries], responses, cfg.forward_batch_size
    )
    invalid = ~mask.bool()
    out["logprobs"] = out["logprobs"].masked_fill(invalid, core.INVALID_LOGPROB)
    out["ref_logprobs"] = out["ref_logprobs"].masked_fill(invalid, core.INVALID_LOGPROB)
    out["values"] = out["values"] * mask
    out.update(query_responses=qr, attention_mask=attn, position_ids=pos, responses=responses, mask=mask)
    out.update(last=s["last"], has_eos=s["has_eos"], Lq=torch.tensor(Lq))
    return out


def reward_shift(accelerator, ref, reward, reward_tok, queries: list[Query], cfg: PPOArgs, tok) -> float:
    """Mean score of the reference policy's samples on up to --reward-norm-prompts training prompts, computed once
    before training and subtracted from every rollout score, so a response as good as the reference's scores ~0.

    N+ detail "reward normalisation" (Huang et al. 2024, arXiv 2403.17031), after Ziegler et al. 2019 (Sec. 2),
    who normalise the reward to mean 0 on x ~ D, y ~ rho(.|x), the reference policy's samples.
    """
    import random

    import torch

    if cfg.reward_norm_prompts <= 0:
        return 0.0
    chosen = random.Random(cfg.seed).sample(queries, min(cfg.reward_norm_prompts, len(queries)))
    mine = chosen[accelerator.process_index :: accelerator.num_processes]  # each rank samples its share
    total = torch.zeros(2, device=accelerator.device)  # (sum of scores, count)
    from tqdm.auto import tqdm

    batches = list(_chunks(len(mine), cfg.forward_batch_size))
    for sl in tqdm(batches, desc="ppo reward normalisation", disable=not accelerator.is_main_process):
        part = mine[sl]
        s = sample(ref, part, cfg, tok)
        scores = score_responses(reward, reward_tok, tok, [x.messages for x in part], s["responses"], len(part))
        total += torch.stack([scores.sum(), torch.tensor(float(len(part)), device=scores.device)]).to(total.device)
    total = accelerator.reduce(total, "sum")
    return float(total[0] / total[1])


def advantages(
    batch: dict[str, torch.Tensor], cfg: PPOArgs, kl_coef: float, shift: float = 0.0
) -> dict[str, torch.Tensor]:
    """Scores -> shifted (reward_shift), EOS-penalised, KL-penalised per-token rewards -> GAE advantages (whitened)
    and value targets."""
    from rlhf import ppo_core as core

    mask = batch["mask"]
    scores = core.apply_eos_penalty(batch["scores"] - shift, batch["has_eos"], cfg.missing_eos_penalty)  # (B,)
    kl = core.per_token_kl(batch["logprobs"], batch["ref_logprobs"], mask)  # (B, T)
    rewards = core.kl_penalized_rewards(scores, kl, batch["last"], kl_coef)  # (B, T)
    if cfg.whiten_rewards:
        rewards = core.whiten(rewards, mask, shift_mean=False)
    adv, returns = core.gae(rewards, batch["values"], mask, cfg.gamma, cfg.lam)
    return {"advantages": core.whiten(adv, mask), "returns": returns, "kl": kl, "penalised_scores": scores}


def ppo_update(accelerator, model, optimizer, batch: dict, cfg: PPOArgs) -> dict[str, float]:
    """num_ppo_epochs passes of clipped PPO updates: each pass splits the rollouts into num_mini_batches mini-batches,
    one optimizer step each, each computed in gradient_accumulation_steps micro-batches.

    Exact accumulation: a micro-batch's loss is weighted by its share of the mini-batch's response tokens, so the
    summed gradient is that of the mini-batch's token mean (losses normalised by the global token count, as OpenRLHF
    does) however it is split; clipping, step and zero_grad end every mini-batch, so no gradient carries over.
    """
    import contextlib

    import torch

    from rlhf import ppo_core as core

    B, Lq = len(batch["responses"]), int(batch["Lq"])
    stats: dict[str, list[float]] = {"loss/policy": [], "loss/value": [], "clipfrac/policy": [], "clipfrac/value": []}
    for _ in range(cfg.num_ppo_epochs):
        perm = torch.randperm(B, device=batch["responses"].device)
        for mini in torch.tensor_split(perm, min(cfg.num_mini_batches, B)):
            tokens = batch["mask"][mini].sum().clamp(min=1)
            micros = torch.tensor_split(mini, min(cfg.gradient_accumulation_steps, len(mini)))
            for j, idx in enumerate(micros):
                # Gradients are all-reduced across processes once, on the mini-batch's last micro-batch.
                sync = contextlib.nullcontext() if j == len(micros) - 1 else accelerator.no_sync(model)
                with sync:
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
                    accelerator.backward((pg + cfg.vf_coef * vf) * (mask.sum() / tokens))
                for k, v in zip(stats, (pg, vf, pg_clip, vf_clip)):
                    stats[k].append(v.item())
            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return {k: sum(v) / len(v) for k, v in stats.items()}


def heldout(model, ref, reward, reward_tok, prompts: list[Query], cfg: PPOArgs, tok) -> dict[str, float]:
    """Mean reward-model score (unshifted: the number `evaluate` gives), KL to the reference (nats per response) and
    length on held-out prompts. Sampled as in training, from a fixed seed, so before and after are comparable."""
    import torch
    from tqdm.auto import tqdm

    torch.manual_seed(cfg.seed)
    scores, kls, lengths, eos = [], [], [], []
    # minutes on a CPU for a few dozen prompts: show it (rank 0 only, like the training bar)
    batches = list(_chunks(len(prompts), cfg.forward_batch_size))
    for sl in tqdm(batches, desc="ppo held-out", disable=int(os.environ.get("RANK", "0")) != 0):
        out = rollout(model, ref, reward, reward_tok, prompts[sl], cfg, tok)
        scores += out["scores"].tolist()
        kls += ((out["logprobs"] - out["ref_logprobs"]) * out["mask"]).sum(1).tolist()
        lengths += out["mask"].sum(1).tolist()
        eos += out["has_eos"].float().tolist()
    n = len(scores)
    return {"score": sum(scores) / n, "kl": sum(kls) / n, "length": sum(lengths) / n, "eos_rate": sum(eos) / n}


def _prompt_batches(prompts: list[Query], batch_size: int, seed: int):
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
        "score": batch["scores"].mean(),  # unshifted reward-model score
        "kl": adv["kl"].sum(1).mean(),  # nats per response, k1 estimate
        "length": mask.sum(1).mean(),
        "eos_rate": batch["has_eos"].float().mean(),
    }
    # Average over processes so every rank logs (and adapts beta with) the same numbers.
    out = {k: accelerator.reduce(v.detach().float(), "mean").item() for k, v in local.items()}
    return {**out, **losses, "kl_coef": kl_coef}


def make_accelerator(cfg: PPOArgs):
    """An Accelerator for this device (bf16 where supported) with --report-to wired to its trackers.

    Gradient accumulation is ppo_update's (exact, per mini-batch), not accelerate's: it would divide every loss by a
    fixed count and step on a global micro-batch counter that drifts when a mini-batch is not a multiple of it.
    """
    import torch
    from accelerate import Accelerator

    cuda = use_cuda(cfg)
    bf16 = cfg.bf16 if cfg.bf16 is not None else bool(cuda and torch.cuda.is_bf16_supported())
    trackers = [t for t in cfg.report_to.split(",") if t and t != "none"]
    accelerator = Accelerator(
        cpu=not cuda,
        mixed_precision="bf16" if bf16 else "no",
        log_with=trackers or None,  # tensorboard, wandb, ... through accelerate's trackers
        project_dir=cfg.output_dir,
    )
    if trackers:
        accelerator.init_trackers("ppo", config=dataclasses.asdict(cfg))
    return accelerator


def make_optimizer(cfg: PPOArgs, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW, eps 1e-5 (N+ detail), at --learning-rate (0 is a rate: the default applies only when it is unset), with
    --weight-decay on every weight but biases and norms, the split transformers' Trainer.get_decay_parameter_names
    makes (decoupled weight decay, Loshchilov & Hutter 2019)."""
    import torch

    from rlhf.trl_compat import get_parameter_names  # transformers.trainer_pt_utils: behind the version check

    no_decay = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]
    decay = set(get_parameter_names(model, [torch.nn.LayerNorm], no_decay))
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in params if n in decay], "weight_decay": cfg.weight_decay},
        {"params": [p for n, p in params if n not in decay], "weight_decay": 0.0},
    ]
    lr = DEFAULT_LR if cfg.learning_rate is None else cfg.learning_rate
    return torch.optim.AdamW(groups, lr=lr, eps=1e-5)


def prompt_ids(cfg: PPOArgs, tok) -> tuple[list[Query], list[Query]]:
    """(train, held-out) prompts; prompts that leave no room for --response-length are dropped."""
    from rlhf.data import heldout_path, load_prompts, split_prompts

    eval_path = heldout_path(cfg.data, cfg.eval_data)
    train_prompts, test_prompts = split_prompts(load_prompts(cfg.data), eval_path, cfg.test_fraction, cfg.seed)
    max_prompt = cfg.max_length - cfg.response_length
    train_q = encode_prompts(train_prompts, tok, max_prompt, "train")
    return train_q, encode_prompts(test_prompts, tok, max_prompt, "held-out")[: cfg.eval_prompts]


def save_checkpoint(out_dir: Path, step: int, model, tok) -> Path:
    """--save-steps: the policy (loadable like the final one) and the value model under checkpoint-STEP/."""
    path = out_dir / f"checkpoint-{step}"
    model.policy.save_pretrained(path)
    tok.save_pretrained(path)
    model.value_model.save_pretrained(path / "value_model")
    return path


def planned_steps(cfg: PPOArgs, n_train: int, n_test: int, world: int) -> int:
    """PPO steps (rollout batches) this run takes, said before the work starts; too few prompts is an error."""
    B = cfg.per_device_train_batch_size
    if n_train < B:
        raise ValueError(f"{n_train} training prompts is fewer than --per-device-train-batch-size {B}")
    steps = cfg.max_steps if cfg.max_steps >= 0 else max(1, math.ceil(cfg.num_train_epochs * n_train / (B * world)))
    say_plan(f"{steps} PPO steps x {B * world} prompts = {steps * B * world} rollouts of up to {cfg.response_length} "
             f"tokens, {cfg.num_ppo_epochs} update epochs each; held-out: {n_test} prompts sampled before and after; "
             f"reward shift from {min(max(cfg.reward_norm_prompts, 0), n_train)} reference samples")  # fmt: skip
    return steps


def train(cfg: PPOArgs, out_dir: Path) -> dict[str, Any]:
    import torch
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from rlhf import ppo_core as core

    accelerator = make_accelerator(cfg)
    set_seed(cfg.seed)
    tok, reward_tok, policy, ref, reward, value = load_models(cfg, accelerator.device)
    tok.padding_side = "left"
    train_q, test_q = prompt_ids(cfg, tok)
    B = cfg.per_device_train_batch_size
    steps = planned_steps(cfg, len(train_q), len(test_q), accelerator.num_processes)
    model = _policy_and_value(policy, value)
    optimizer = make_optimizer(cfg, model)
    # N+ detail: learning rate annealed linearly to 0 over the PPO steps. Not passed to prepare(), which would step
    # it once per process.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: max(0.0, 1.0 - i / steps))
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    before = heldout(unwrapped, ref, reward, reward_tok, test_q, cfg, tok)
    shift = reward_shift(accelerator, ref, reward, reward_tok, train_q, cfg, tok)
    set_seed(cfg.seed + accelerator.process_index)  # different rollouts on each rank
    kl_ctl = core.AdaptiveKLController(cfg.kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl else (
        core.FixedKLController(cfg.kl_coef))  # fmt: skip
    batches = _prompt_batches(train_q, B, cfg.seed + accelerator.process_index)
    rollout_s = update_s = 0.0  # wall time of the two phases, so a user sees which one to make faster
    for step in tqdm(range(1, steps + 1), desc="ppo", disable=not accelerator.is_main_process):
        unwrapped.eval()
        t0 = time.perf_counter()
        batch = rollout(unwrapped, ref, reward, reward_tok, next(batches), cfg, tok)
        t1 = time.perf_counter()
        adv = advantages(batch, cfg, kl_ctl.value, shift)
        batch.update(advantages=adv["advantages"], returns=adv["returns"])
        unwrapped.train()
        losses = ppo_update(accelerator, model, optimizer, batch, cfg)
        scheduler.step()
        t2 = time.perf_counter()
        rollout_s, update_s = rollout_s + t1 - t0, update_s + t2 - t1
        metrics = _step_metrics(accelerator, batch, adv, losses, kl_ctl.value)
        metrics |= {"rollouts_per_s": B / (t1 - t0), "rollout_s": t1 - t0, "update_s": t2 - t1}
        kl_ctl.update(metrics["kl"], B * accelerator.num_processes)
        if accelerator.is_main_process and (step % cfg.logging_steps == 0 or step in (1, steps)):
            append_metrics(out_dir, {"step": step, "lr": scheduler.get_last_lr()[0], **metrics})
        accelerator.log(metrics, step=step)
        if cfg.save_steps > 0 and step % cfg.save_steps == 0 and accelerator.is_main_process:
            save_checkpoint(out_dir, step, unwrapped, tok)
    unwrapped.eval()
    after = heldout(unwrapped, ref, reward, reward_tok, test_q, cfg, tok)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped.policy.save_pretrained(out_dir)
        tok.save_pretrained(out_dir)
    accelerator.end_training()  # finishes trackers; destroys the process group, so it comes last
    results = (
        {f"{k}_before": v for k, v in before.items()} | after | {"reward_shift": shift} | objective_record(reward)
    )
    # rollouts/s: sampling plus the no-grad policy, reference, value and reward passes, per process
    speed = {"rollouts_per_s": steps * B / rollout_s, "rollout_s": rollout_s, "update_s": update_s}
    if accelerator.is_main_process:
        print(f"[ppo] {speed['rollouts_per_s']:.2f} rollouts/s; rollouts {rollout_s:.0f} s, updates {update_s:.0f} s")
    # steps: rollout-and-update iterations; each takes num_ppo_epochs x minibatches optimizer steps (ppo_update)
    updates = steps * cfg.num_ppo_epochs * min(cfg.num_mini_batches, B)
    return results | speed | {"steps": steps, "optimizer_steps": updates, "heldout_prompts": len(test_q),
                              "final_kl_coef": kl_ctl.value}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(PPOArgs, argv, prog="python rlhf/train.py ppo")
    preflight(cfg, data="prompts", split=True, required=REQUIRED)  # a mistake exits 2 before any model loads
    out = start_run(cfg)
    finish_rl_run(out, cfg, "ppo", train(cfg, out), "PPO (N+ implementation details, Huang et al. 2024)")
    return 0
