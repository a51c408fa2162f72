"""`python rlhf/train.py reward`: a Bradley-Terry reward model on collected comparisons (TRL RewardTrainer).

The model is the base LM with a one-output sequence-classification head, trained on
loss = -log sigmoid(r(x, y_chosen) - r(x, y_rejected))  (Eq. 1 of Ouyang et al. 2022, arXiv 2203.02155),
optionally through LoRA adapters. After training it reports, on held-out prompts, pairwise accuracy and the
correlation of reward with response length (the verbosity check: a reward that mostly counts tokens is a bug).
`score()` is the one way the rest of the project (ppo, evaluate, audit) asks a reward model for numbers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rlhf.common import BaseConfig, metrics_callback, start_run, trl_args, write_eval, write_model_card
from rlhf.config import parse_config

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class RewardArgs(BaseConfig):
    """Train a reward model on preference pairs (TRL RewardTrainer)."""

    output_dir: str = field(default="runs/reward", metadata={"help": "where the model, config and metrics go"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 = full fine-tuning"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (alpha / r scales the update)"})
    center_rewards_coefficient: float | None = field(
        default=None, metadata={"help": "pull mean reward to 0 (Eisenstein et al. 2023); e.g. 0.01"}
    )
    score_batch_size: int = field(default=32, metadata={"help": "batch size for held-out scoring"})


def load_reward_model(name_or_path: str, tokenizer: PreTrainedTokenizerBase | None = None) -> PreTrainedModel:
    """A sequence-classification model with one output; the head is new when loading a plain LM."""
    from transformers import AutoModelForSequenceClassification

    from rlhf.models import resolve_model

    model = AutoModelForSequenceClassification.from_pretrained(resolve_model(name_or_path), num_labels=1)
    if tokenizer is not None:
        # The head reads the last non-pad token, so the model must know the pad id.
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict[str, str]] | str],
    responses: list[str],
    batch_size: int = 32,
) -> list[float]:
    """Reward of each (prompt, response), formatted by the chat template exactly as RewardTrainer formats pairs."""
    import torch

    from annotate.schema import as_messages

    if len(prompts) != len(responses):
        raise ValueError(f"score: {len(prompts)} prompts but {len(responses)} responses")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    old_side, tokenizer.padding_side = tokenizer.padding_side, "right"
    out: list[float] = []
    try:
        for start in range(0, len(prompts), batch_size):
            convs = [
                as_messages(p) + [{"role": "assistant", "content": r}]
                for p, r in zip(prompts[start : start + batch_size], responses[start : start + batch_size])
            ]
            ids = [tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in convs]
            batch = tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(device)
            with torch.no_grad():
                logits = model(**batch).logits  # (B, 1)
            out.extend(logits[:, 0].float().cpu().tolist())
    finally:
        tokenizer.padding_side = old_side
        model.train(was_training)
    return out


def heldout_report(model, tokenizer, test: Dataset, batch_size: int = 32) -> dict[str, Any]:
    """Pairwise accuracy, mean margin and reward-vs-length correlation (Pearson, Spearman) on held-out pairs."""
    import numpy as np
    from scipy import stats

    prompts = list(test["prompt"])
    chosen = [m[0]["content"] for m in test["chosen"]]
    rejected = [m[0]["content"] for m in test["rejected"]]
    r_c = np.array(score(model, tokenizer, prompts, chosen, batch_size))
    r_r = np.array(score(model, tokenizer, prompts, rejected, batch_size))
    rewards = np.concatenate([r_c, r_r])
    lengths = np.array([len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in chosen + rejected])
    varied = rewards.std() > 0 and lengths.std() > 0  # correlation is undefined for a constant
    return {
        "eval_pairs": len(test),
        "eval_accuracy": float((r_c > r_r).mean() + 0.5 * (r_c == r_r).mean()),  # ties count half
        "eval_margin_mean": float((r_c - r_r).mean()),
        "eval_reward_mean": float(rewards.mean()),
        "eval_reward_std": float(rewards.std()),
        "eval_length_pearson": float(stats.pearsonr(rewards, lengths)[0]) if varied else None,
        "eval_length_spearman": float(stats.spearmanr(rewards, lengths)[0]) if varied else None,
    }


def build_trainer(cfg: RewardArgs):
    """(trainer, tokenizer, held-out set, data info): everything prepared, nothing trained yet."""
    from trl import RewardConfig, RewardTrainer

    from rlhf.data import prepare, trainer_columns
    from rlhf.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model)
    train, test, info = prepare(
        cfg.data,
        tokenizer,
        eval_data=cfg.eval_data,
        test_fraction=cfg.test_fraction,
        seed=cfg.seed,
        max_length=cfg.max_length,
    )
    from transformers import set_seed

    set_seed(cfg.seed)  # the new score head is drawn here: same seed, same run
    model = load_reward_model(cfg.model, tokenizer)
    peft_config = None
    if cfg.lora_r > 0:
        from peft import LoraConfig

        # The new score head is trained in full (modules_to_save); only the backbone goes through adapters.
        peft_config = LoraConfig(
            task_type="SEQ_CLS", r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules="all-linear"
        )
    args = trl_args(
        cfg,
        RewardConfig,
        default_lr=1e-4 if cfg.lora_r else 1e-5,
        center_rewards_coefficient=cfg.center_rewards_coefficient,
        eval_strategy="no",
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=trainer_columns(train),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[metrics_callback(cfg.output_dir)],
    )
    return trainer, tokenizer, test, info


def run(cfg: RewardArgs) -> dict[str, Any]:
    """Train, save, and evaluate on held-out pairs; returns the held-out results."""
    out = start_run(cfg)
    trainer, tokenizer, test, info = build_trainer(cfg)
    before = heldout_report(trainer.model, tokenizer, test, cfg.score_batch_size)
    trainer.train()
    model = trainer.model
    if cfg.lora_r > 0:
        model = model.merge_and_unload()  # a plain checkpoint that score() and the other commands load directly
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    results = heldout_report(model, tokenizer, test, cfg.score_batch_size)
    results["eval_accuracy_before"] = before["eval_accuracy"]
    results.update({f"train_{k}": v for k, v in info["train"].items()})
    write_eval(out, results)
    write_model_card(
        out,
        cfg,
        "reward",
        results,
        "A reward model (sequence classification, one output) trained on pairwise preferences.",
    )
    print(
        f"[reward] held-out accuracy {results['eval_accuracy']:.3f} on {results['eval_pairs']} pairs "
        f"(before training {before['eval_accuracy']:.3f}); reward~length Spearman {results['eval_length_spearman']}"
    )
    return results


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(RewardArgs, argv, prog="python rlhf/train.py reward")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    run(cfg)
    return 0
