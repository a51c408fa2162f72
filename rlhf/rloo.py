"""`python rlhf/train.py rloo`: RLOO against a trained reward model (TRL RLOOTrainer), the cheaper maintained
alternative to PPO: no value model, the baseline of each sample is the mean reward of the other samples of the same
prompt (REINFORCE leave-one-out, Ahmadian et al. 2024, arXiv 2402.14740, Eq. 4).

The reward model from `rlhf/train.py reward` becomes the trainer's reward function through rlhf.reward.score: each
completion is decoded as PPO decodes its rollouts and scored as the chat-templated conversation read at its last
token, the numbers reward evaluation, PPO and `evaluate` give (TRL's own path for a model would re-tokenize the text
and read the head at the last non-pad token, which misreads when pad == eos). Held-out prompts are scored before
and after training with the same sampler as PPO (eval.json: score_before, score, kl).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from rlhf.common import (
    BaseArgs,
    OnlineArgs,
    finish_rl_run,
    metrics_callback,
    online_trl_args,
    say_plan,
    start_run,
    use_cuda,
)
from rlhf.config import parse_config
from rlhf.preflight import preflight
from rlhf.reward_heads import ObjectiveArgs, objective_record


@dataclass
class RLOOArgs(OnlineArgs, ObjectiveArgs, BaseArgs):
    """RLOO against a reward model (TRL RLOOTrainer)."""

    trl_config_class: ClassVar[str] = "trl.RLOOConfig"  # its other fields are options too (rlhf/config.py)
    output_dir: str = field(default="runs/rloo", metadata={"help": "where the policy, config and metrics go"})
    reward_model: str | None = field(default=None, metadata={"help": "trained reward model (rlhf/train.py reward)"})
    num_generations: int = field(
        default=4, metadata={"help": "samples per prompt (k); the baseline uses the k-1 others"}
    )


def _trl_config(cfg: RLOOArgs):
    from trl import RLOOConfig

    return online_trl_args(cfg, RLOOConfig)


def train(cfg: RLOOArgs) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import RLOOTrainer

    from rlhf.data import heldout_path, load_prompts, split_prompts
    from rlhf.models import load_tokenizer, resolve_model
    from rlhf.ppo import PPOArgs, _policy_and_value, encode_prompts, heldout
    from rlhf.reward import load_reward_model, reward_function

    device = "cuda" if use_cuda(cfg) else "cpu"
    tok = load_tokenizer(cfg.model)
    tok.padding_side = "left"
    rm_tok = load_tokenizer(cfg.reward_model)
    reward = load_reward_model(cfg.reward_model, rm_tok, objective=cfg.objective)
    reward = reward.to(device).eval().requires_grad_(False)
    eval_path = heldout_path(cfg.data, cfg.eval_data)
    train_p, test_p = split_prompts(load_prompts(cfg.data), eval_path, cfg.test_fraction, cfg.seed)
    limit = cfg.max_length - cfg.response_length
    n_tokens = [len(x.ids) for x in encode_prompts(train_p, tok, 10**9, "train")]
    train_p = [p for p, n in zip(train_p, n_tokens) if n <= limit]
    if len(train_p) < len(n_tokens):
        print(f"[rloo] train: dropped {len(n_tokens) - len(train_p)} prompts over {limit} tokens")
    test_q = encode_prompts(test_p, tok, limit, "held-out")[: cfg.eval_prompts]

    # Held-out numbers come from PPO's sampler, so PPO and RLOO runs compare like for like.
    ev = PPOArgs(response_length=cfg.response_length, temperature=cfg.temperature, seed=cfg.seed)
    path = resolve_model(cfg.model)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval().requires_grad_(False)

    def measure(policy) -> dict[str, float]:
        return heldout(_policy_and_value(policy.to(device).eval(), reward), ref, reward, rm_tok, test_q, ev, tok)

    args = _trl_config(cfg)
    steps = args.max_steps if args.max_steps > 0 else "one epoch of"
    say_plan(f"{steps} RLOO steps x {args.per_device_train_batch_size * args.gradient_accumulation_steps} "
             f"completions ({cfg.num_generations} per prompt, up to {cfg.response_length} tokens) from "
             f"{len(train_p)} training prompts; held-out: {len(test_q)} prompts sampled before and after")  # fmt: skip
    before = measure(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32))
    trainer = RLOOTrainer(
        model=path,
        reward_funcs=reward_function(reward, rm_tok, tok),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": train_p}),
        processing_class=tok,
    )
    trainer.add_callback(metrics_callback(cfg.output_dir))
    runtime = trainer.train().metrics["train_runtime"]
    trainer.save_model(cfg.output_dir)
    tok.save_pretrained(cfg.output_dir)
    after = measure(trainer.model)
    # TRL interleaves sampling and updates, so this rate counts both (PPO's rollouts_per_s counts sampling alone).
    per_step = trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
    done = trainer.state.global_step * per_step * trainer.accelerator.num_processes
    speed = {"completions_per_s": done / runtime, "train_s": runtime}
    print(f"[rloo] {speed['completions_per_s']:.2f} completions/s including updates ({runtime:.0f} s)")
    scored = {"heldout_prompts": len(test_q), "steps": trainer.state.global_step} | objective_record(reward)
    return {f"{k}_before": v for k, v in before.items()} | after | speed | scored


def main(argv: list[str] | None = None) -> int:
    from rlhf.ppo import REQUIRED

    cfg = parse_config(RLOOArgs, argv, prog="python rlhf/train.py rloo")
    # Before any model loads: the inputs, and RLOOConfig itself (a batch not divisible by --num-generations).
    preflight(cfg, data="prompts", split=True, required=REQUIRED, trl_config=_trl_config)
    out = start_run(cfg)
    finish_rl_run(out, cfg, "rloo", train(cfg), "RLOO (TRL RLOOTrainer, Ahmadian et al. 2024)")
    return 0
