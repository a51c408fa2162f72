"""`python rlhf/train.py grpo`: GRPO (TRL GRPOTrainer) on a reward that blends the reward model with verifiers.

GRPO (Shao et al. 2024, DeepSeekMath, arXiv 2402.03300) samples a group of G completions o_1..o_G per prompt q and
maximises (Eq. 3)

    J(theta) = E[ 1/G sum_i 1/|o_i| sum_t min(rho_it A_it, clip(rho_it, 1 - eps, 1 + eps) A_it)
                  - beta KL(pi_theta || pi_ref) ],      rho_it = pi_theta(o_it | q, o_i<t) / pi_old(o_it | q, o_i<t),

with the KL estimated per token as pi_ref/pi_theta - log(pi_ref/pi_theta) - 1 (Eq. 4) and, with one reward per
completion (outcome supervision, Sec. 4.1.2), the group-relative advantage A_it = (r_i - mean(r)) / std(r) for every
token of o_i: the group's mean is the baseline, so no value model is needed. TRL's GRPOTrainer implements it; we keep
its token-level aggregation (`loss_type` dapo) rather than Eq. 3's 1/|o_i|, which pushes each token of a short
right answer harder and each token of a long wrong one less (the length bias this project measures); `--loss-type
grpo` restores Eq. 3.

The reward r_i blends (blend() below):
    r_i = rm_weight * RM(q, o_i) + verifier_weight * [o_i passes q's verifier]   where q has a verifier,
    r_i = rm_weight * RM(q, o_i)                                                  where it has none.
The verdict is 0/1, not -1/+1: every completion of a group shares its prompt, so a constant offset cancels in
r_i - mean(r), and -1/+1 would only double the weight. With 0/1, --verifier-weight is exactly the reward gap between a
right and a wrong answer, in the reward model's units. RM(q, o) is rlhf.reward.reward_function, the one scoring path
(PPO, RLOO, `evaluate`); `--reward-model none` trains on the verifiers alone (RL with verifiable rewards), which needs
a verifier on every prompt. Verifiers (annotate.verifiers) come from pools' `meta.verifier`, matched to prompts by
annotate.schema.prompt_id_for(messages), and travel with each prompt as a dataset column TRL hands to the reward.

Held-out prompts are sampled before and after training with PPO's sampler (eval.json: verifier accuracy on the
checkable ones, mean reward-model score, mean length and its change, KL to the starting policy in nats per response).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from rlhf.common import (
    BaseArgs,
    OnlineArgs,
    metrics_callback,
    online_trl_args,
    say_plan,
    start_run,
    use_cuda,
    write_eval,
    write_model_card,
)
from rlhf.config import parse_config
from rlhf.reward_heads import ObjectiveArgs, objective_record

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from rlhf.ppo import PPOArgs, Query

NO_MODEL = "none"  # --reward-model none: verifiers alone


@dataclass
class GRPOArgs(OnlineArgs, ObjectiveArgs, BaseArgs):
    """GRPO on a reward model's score blended with verifiers' verdicts (TRL GRPOTrainer)."""

    trl_config_class: ClassVar[str] = "trl.GRPOConfig"  # its other fields are options too (rlhf/config.py)
    output_dir: str = field(default="runs/grpo", metadata={"help": "where the policy, config and metrics go"})
    reward_model: str | None = field(
        default=None, metadata={"help": "trained reward model (rlhf/train.py reward), or 'none' for verifiers alone"}
    )
    verifiers: str | None = field(
        default=None,
        metadata={"help": "pools or stores (comma-separated) with the prompts' verifiers; default: --data if a pool"},
    )
    rm_weight: float = field(default=1.0, metadata={"help": "weight of the reward model's score in the reward"})
    verifier_weight: float = field(
        default=1.0, metadata={"help": "reward added to a verified answer (0 to a wrong one), on checkable prompts"}
    )
    per_device_train_batch_size: int = field(
        default=16, metadata={"help": "completions (not prompts) per device per step; a multiple of --num-generations"}
    )
    num_generations: int = field(default=8, metadata={"help": "group size G: samples per prompt (TRL's default)"})
    kl_coef: float = field(
        default=0.04, metadata={"help": "beta: KL penalty against the starting policy (paper: 0.04)"}
    )
    eval_samples: int = field(default=4, metadata={"help": "samples per held-out prompt (accuracy is their mean)"})


def _trl_config(cfg: GRPOArgs):
    from trl import GRPOConfig

    return online_trl_args(cfg, GRPOConfig)


# -- the reward ------------------------------------------------------------------------------------------------------
def blend(
    rm_scores: list[float] | None, verdicts: list[bool | None], rm_weight: float, verifier_weight: float
) -> list[float]:
    """Per completion: rm_weight * score, plus verifier_weight where a verdict exists (None: no verifier).
    Without a reward model (rm_scores None) every completion needs a verdict."""
    out = []
    for i, verdict in enumerate(verdicts):
        if rm_scores is None and verdict is None:
            raise ValueError("no reward model and no verifier for a completion: nothing to score it with")
        r = rm_weight * rm_scores[i] if rm_scores is not None else 0.0
        out.append(r + verifier_weight * float(verdict) if verdict is not None else r)
    return out


def blended_reward(
    policy_tokenizer: PreTrainedTokenizerBase,
    rm: Callable[..., list[float]] | None,
    rm_weight: float = 1.0,
    verifier_weight: float = 1.0,
) -> Callable[..., list[float]]:
    """A TRL reward function: `rm` (rlhf.reward.reward_function, or None) blended with each prompt's verifier, which
    TRL passes in as the dataset's `verifier` column (a spec as JSON, "" for none). Logs the training batches'
    verifier accuracy and mean reward-model score beside TRL's own metrics."""
    from annotate.verifiers import verify
    from rlhf.sampling import response_text

    def grpo_reward(
        prompts: list,
        completions: list,
        completion_ids: list[list[int]] | None = None,
        verifier: list[str] | None = None,
        log_metric: Callable | None = None,
        **_,
    ) -> list[float]:
        if completion_ids is not None:  # decoded as the reward model's path decodes them
            texts = [response_text(policy_tokenizer, ids) for ids in completion_ids]
        else:
            texts = [(c[-1]["content"] if isinstance(c, list) else c).strip() for c in completions]
        specs = verifier or [""] * len(texts)
        verdicts = [verify(json.loads(s), t) if s else None for s, t in zip(specs, texts)]
        scores = rm(prompts=prompts, completions=completions, completion_ids=completion_ids) if rm else None
        checked = [v for v in verdicts if v is not None]
        if log_metric is not None and checked:
            log_metric("verifier/accuracy", sum(checked) / len(checked))
        if log_metric is not None and scores:
            log_metric("rm/score", sum(scores) / len(scores))
        return blend(scores, verdicts, rm_weight, verifier_weight)

    return grpo_reward


# -- prompts and their verifiers -------------------------------------------------------------------------------------
def prompt_specs(cfg: GRPOArgs, prompts: list) -> list[dict | None]:
    """Each prompt's verifier (None where it has none), from --verifiers or a pool given as --data."""
    from annotate.pool import is_pool, read_verifiers
    from annotate.schema import prompt_id_for

    sources = [s for s in (cfg.verifiers or "").split(",") if s.strip()]
    if not sources and is_pool(cfg.data):
        sources = [cfg.data]
    found: dict[str, dict] = {}
    for source in sources:
        found.update(read_verifiers(source.strip()))
    return [found.get(prompt_id_for(p)) for p in prompts]


def load_task(cfg: GRPOArgs) -> dict[str, Any]:
    """Train and held-out prompts (the by-prompt split of rloo and ppo) with their verifiers; a usage error (exit 2)
    when the reward cannot be computed for some prompt."""
    from annotate.errors import UsageError
    from rlhf.data import heldout_path, load_prompts, split_prompts

    eval_path = heldout_path(cfg.data, cfg.eval_data)
    train_p, test_p = split_prompts(load_prompts(cfg.data), eval_path, cfg.test_fraction, cfg.seed)
    train_v, test_v = prompt_specs(cfg, train_p), prompt_specs(cfg, test_p)
    if cfg.reward_model == NO_MODEL:
        missing = [p for p, v in zip(train_p + test_p, train_v + test_v) if v is None]
        if missing:
            text = missing[0][-1]["content"][:80]
            why = f"{len(missing)} of {len(train_p) + len(test_p)} prompts have no verifier (first: {text!r})"
            raise UsageError(f"--reward-model none: {why}; give a reward model, or --verifiers for every prompt")
        if cfg.verifier_weight <= 0:
            raise UsageError(f"--reward-model none needs --verifier-weight > 0, got {cfg.verifier_weight}")
    n = sum(v is not None for v in train_v)
    print(f"[grpo] {n} of {len(train_p)} training prompts and {sum(v is not None for v in test_v)} of "
          f"{len(test_p)} held-out prompts have a verifier")  # fmt: skip
    return {"train": train_p, "train_verifiers": train_v, "test": test_p, "test_verifiers": test_v}


# -- held-out measurement --------------------------------------------------------------------------------------------
def _response_logprobs(model, s: dict, temperature: float):
    """Log-probs (B, T) of the sampled response tokens under `model`, as PPO's rollout computes them."""
    import torch

    from rlhf import ppo_core as core

    attn = torch.cat([s["query_mask"], s["mask"].long()], 1)  # (B, Lq + T)
    pos = (attn.cumsum(-1) - 1).clamp(min=0)  # position ids skip the left padding
    Lq = s["queries"].shape[1]
    with torch.no_grad():
        logits = model(input_ids=torch.cat([s["queries"], s["responses"]], 1), attention_mask=attn,
                       position_ids=pos, use_cache=False).logits  # fmt: skip
    return core.logprobs_of(logits[:, Lq - 1 : -1], s["responses"], temperature)  # logits at t-1 predict token t


def heldout(
    policy,
    ref,
    queries: list[Query],
    specs: list[dict | None],
    tok,
    ev: PPOArgs,
    samples: int,
    reward=None,
    rm_tok=None,
) -> dict[str, float | None]:
    """Verifier accuracy (checkable prompts), mean reward-model score, mean length (tokens) and KL to `ref` (nats per
    response) of `samples` completions per held-out prompt, from a fixed seed, so before and after compare."""
    import torch

    from annotate.verifiers import verify
    from rlhf.ppo import _chunks, sample
    from rlhf.reward import score
    from rlhf.sampling import response_text

    torch.manual_seed(ev.seed)
    rows = [(q, v) for q, v in zip(queries, specs) for _ in range(samples)]
    verdicts, scores, lengths, kls = [], [], [], []
    for sl in _chunks(len(rows), ev.forward_batch_size):
        part = rows[sl]
        s = sample(policy, [q for q, _ in part], ev, tok)
        kl = (_response_logprobs(policy, s, ev.temperature) - _response_logprobs(ref, s, ev.temperature)) * s["mask"]
        kls += kl.sum(1).tolist()
        lengths += s["mask"].sum(1).tolist()
        texts = [response_text(tok, r) for r in s["responses"]]
        verdicts += [verify(v, t) for (_, v), t in zip(part, texts) if v is not None]
        if reward is not None:
            scores += score(reward, rm_tok, [q.messages for q, _ in part], texts, ev.forward_batch_size)
    n = len(rows)
    return {"accuracy": sum(verdicts) / len(verdicts) if verdicts else None,
            "score": sum(scores) / n if scores else None, "length": sum(lengths) / n, "kl": sum(kls) / n}  # fmt: skip


# -- the run ---------------------------------------------------------------------------------------------------------
def _reward_model(cfg: GRPOArgs, tok, device: str):
    """(reward model, its tokenizer, the reward function on policy text), all None under --reward-model none."""
    from rlhf.models import load_tokenizer
    from rlhf.reward import load_reward_model, reward_function

    if cfg.reward_model == NO_MODEL:
        return None, None, None
    rm_tok = load_tokenizer(cfg.reward_model)
    reward = load_reward_model(cfg.reward_model, rm_tok, objective=cfg.objective)  # --objective: heads' weights
    reward = reward.to(device).eval().requires_grad_(False)
    return reward, rm_tok, reward_function(reward, rm_tok, tok)  # the one scoring path


def _fitting_prompts(cfg: GRPOArgs, tok, task: dict[str, Any]) -> tuple[list[int], list]:
    """(indices of the training prompts that leave room for --response-length, held-out (query, verifier) pairs that
    do, at most --eval-prompts of them)."""
    from rlhf.ppo import encode_prompts

    limit = cfg.max_length - cfg.response_length
    n_tokens = [len(x.ids) for x in encode_prompts(task["train"], tok, 10**9, "train")]
    keep = [i for i, n in enumerate(n_tokens) if n <= limit]
    if len(keep) < len(n_tokens):
        print(f"[grpo] train: dropped {len(n_tokens) - len(keep)} prompts over {limit} tokens")
    held = [(q, v) for q, v in zip(encode_prompts(task["test"], tok, 10**9, "held-out"), task["test_verifiers"])
            if len(q.ids) <= limit][: cfg.eval_prompts]  # fmt: skip
    return keep, held


def train(cfg: GRPOArgs, task: dict[str, Any] | None = None) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOTrainer

    from rlhf.models import load_tokenizer, resolve_model
    from rlhf.ppo import PPOArgs

    task = task or load_task(cfg)
    device = "cuda" if use_cuda(cfg) else "cpu"
    tok = load_tokenizer(cfg.model)
    tok.padding_side = "left"
    reward, rm_tok, rm = _reward_model(cfg, tok, device)
    keep, held = _fitting_prompts(cfg, tok, task)

    # Held-out numbers come from PPO's sampler, as rloo's do, so the RL commands compare like for like.
    ev = PPOArgs(response_length=cfg.response_length, temperature=cfg.temperature, seed=cfg.seed)
    path = resolve_model(cfg.model)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval().requires_grad_(False)

    def measure(policy) -> dict[str, float | None]:
        queries, specs = [q for q, _ in held], [v for _, v in held]
        return heldout(policy.to(device).eval(), ref, queries, specs, tok, ev, cfg.eval_samples, reward, rm_tok)

    args = _trl_config(cfg)
    steps = args.max_steps if args.max_steps > 0 else "one epoch of"
    say_plan(
        f"{steps} GRPO steps x {args.per_device_train_batch_size * args.gradient_accumulation_steps} "
        f"completions ({cfg.num_generations} per prompt, up to {cfg.response_length} tokens) from {len(keep)} "
        f"training prompts; held-out: {len(held)} prompts x {cfg.eval_samples} samples, before and after"
    )
    before = measure(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32))
    specs = [task["train_verifiers"][i] for i in keep]
    # TRL hands every dataset column but the prompt to the reward function: each prompt's verifier travels with it
    # (as JSON: Arrow cannot hold specs of different shapes in one column; "" where there is none).
    data = {"prompt": [task["train"][i] for i in keep], "verifier": [json.dumps(v) if v else "" for v in specs]}
    trainer = GRPOTrainer(
        model=path,
        reward_funcs=blended_reward(tok, rm, cfg.rm_weight, cfg.verifier_weight),
        args=args,
        train_dataset=Dataset.from_dict(data),
        processing_class=tok,
    )
    trainer.add_callback(metrics_callback(cfg.output_dir))
    runtime = trainer.train().metrics["train_runtime"]
    trainer.save_model(cfg.output_dir)
    tok.save_pretrained(cfg.output_dir)
    after = measure(trainer.model)
    per_step = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
    done = trainer.state.global_step * per_step * trainer.accelerator.num_processes
    print(f"[grpo] {done / runtime:.2f} completions/s including updates ({runtime:.0f} s)")
    counts = {"heldout_prompts": len(held), "heldout_checkable": sum(v is not None for _, v in held),
              "train_prompts": len(keep), "train_checkable": sum(v is not None for v in specs)}  # fmt: skip
    before = {f"{k}_before": v for k, v in before.items() if k != "kl"}  # the policy is the reference: KL 0
    speed = {"completions_per_s": done / runtime, "train_s": runtime, "steps": trainer.state.global_step}
    rm_record = objective_record(reward) if reward is not None else {}  # the heads' weights a multi-head RM scored by
    return before | after | {"length_change": after["length"] - before["length_before"]} | counts | speed | rm_record


def _summary(r: dict[str, Any]) -> str:
    def change(key: str, fmt: str) -> str:
        return f"{r[key + '_before']:{fmt}} -> {r[key]:{fmt}}" if r.get(key) is not None else "n/a"

    return (f"held-out verifier accuracy {change('accuracy', '.3f')} on {r['heldout_checkable']} checkable prompts, "
            f"reward-model score {change('score', '.3f')}, length {change('length', '.1f')} tokens, "
            f"KL {r['kl']:.2f} nats")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from annotate.errors import UsageError
    from rlhf.preflight import preflight

    cfg = parse_config(GRPOArgs, argv, prog="python rlhf/train.py grpo")
    required = {"reward_model": "a trained reward model (rlhf/train.py reward), or 'none'",
                "data": "an export, a candidate pool or a prompts file"}  # fmt: skip
    if cfg.reward_model and cfg.objective and cfg.reward_model == NO_MODEL:
        raise UsageError("--objective weighs a reward model's heads: it needs a --reward-model other than 'none'")
    # Before any model loads: the inputs, and GRPOConfig itself (a batch not divisible by --num-generations).
    preflight(cfg, data="prompts", split=True, required=required, none_ok=("reward_model",), trl_config=_trl_config)
    task = load_task(cfg)  # before start_run: a prompt nothing can score exits 2 without leaving a run directory
    out = start_run(cfg)
    results = train(cfg, task)
    write_eval(out, results)
    model = "verifiers alone" if cfg.reward_model == NO_MODEL else f"reward model `{cfg.reward_model}`"
    about = (f"GRPO (TRL GRPOTrainer, Shao et al. 2024) on {model} (rm weight {cfg.rm_weight}, verifier weight "
             f"{cfg.verifier_weight}). Held-out: {_summary(results)}.")  # fmt: skip
    write_model_card(out, cfg, "grpo", results, about)
    print(f"[grpo] {_summary(results)}")
    return 0
