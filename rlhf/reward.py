"""`python rlhf/train.py reward`: a Bradley-Terry reward model on collected comparisons (TRL RewardTrainer).

The model is the base LM with a one-output sequence-classification head, trained on
loss = -log sigmoid(r(x, y_chosen) - r(x, y_rejected))  (Eq. 1 of Ouyang et al. 2022, arXiv 2203.02155),
optionally through LoRA adapters. After training it reports, on held-out prompts, pairwise accuracy and the
correlation of reward with response length (the verbosity check: a reward that mostly counts tokens is a bug).
`--length-debias` counters raters' taste for length in the training pairs: `resample` balances, within bins of
length difference, pairs where the chosen response is the longer with pairs where it is the shorter; `joint`
fits a length term with the reward and drops it at inference (see LengthDebiasTrainer).
`score()` is the one way the project asks a reward model for numbers (the chat-templated conversation, read at its
last token, batched by length): this command's held-out report, ppo (rollouts, through ppo.score_responses), rloo
(TRL's reward function, `reward_function` here), evaluate, the distillation report, and the app's active sampling
(`score_pool`, wired in by app.py). The audit scores no model: it reads the votes alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from rlhf.common import (
    BaseArgs,
    PackingArgs,
    ResumeArgs,
    is_main_process,
    load_data,
    metrics_callback,
    row_tokens,
    trl_args,
)
from rlhf.sampling import response_text  # sampled ids -> the text scored (also importable from here)
from rlhf.skeleton import TrainerRun

if TYPE_CHECKING:
    import pyarrow as pa
    import torch
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from annotate.active import ActiveStrategy


@dataclass
class RewardArgs(ResumeArgs, PackingArgs, BaseArgs):
    """Train a reward model on preference pairs (TRL RewardTrainer)."""

    trl_config_class: ClassVar[str] = "trl.RewardConfig"  # its other fields are options too (rlhf/config.py)
    output_dir: str = field(default="runs/reward", metadata={"help": "where the model, config and metrics go"})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 = full fine-tuning"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (alpha / r scales the update)"})
    center_rewards_coefficient: float | None = field(
        default=None, metadata={"help": "pull mean reward to 0 (Eisenstein et al. 2023); e.g. 0.01"}
    )
    score_batch_size: int = field(default=32, metadata={"help": "batch size for held-out scoring"})
    length_debias: str = field(
        default="none",
        metadata={
            "help": "counter length bias: none; resample (chosen is the longer in half the pairs, per "
            "length-difference bin); joint (a length term fitted with the reward, dropped at inference)",
            "choices": ["none", "resample", "joint"],
        },
    )
    length_lr: float = field(default=1e-2, metadata={"help": "joint: learning rate of the length weight"})
    length_decorrelation: float = field(
        default=1.0, metadata={"help": "joint: weight of the |Pearson(reward, length)| penalty per batch (ODIN)"}
    )


def load_reward_model(name_or_path: str, tokenizer: PreTrainedTokenizerBase | None = None) -> PreTrainedModel:
    """A sequence-classification model with one output; the head is new when loading a plain LM."""
    from transformers import AutoModelForSequenceClassification

    from rlhf.models import resolve_model

    model = AutoModelForSequenceClassification.from_pretrained(resolve_model(name_or_path), num_labels=1)
    if tokenizer is not None:
        # The model's own forward reads the last non-pad token, so it must know the pad id. score() does not use it.
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


# -- scoring: the one path from (prompt, response) to a reward ----------------------------------------------------
#
# Training: TRL 1.16's RewardTrainer tokenizes `prompt + chosen` messages with
# apply_chat_template(messages, tokenize=True, return_dict=True) (trl.data_utils._tokenize), right-pads with the
# pad id, and the sequence-classification head reads "the rightmost token that is not the pad id". That is the true
# last token of the conversation as long as the template does not end with the pad token (ChatML ends with
# "<|im_end|>\n": the "\n"; build_trainer swaps the pad token for training when a template ends with it).
# Scoring below builds the same ids and reads the head at position length-1 of each row, from the lengths, never
# from pad_token_id: with pad == eos (SmolLM2) an EOS inside the sequence cannot be mistaken for padding.


def conversation_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: list[dict[str, str]] | str, response: str
) -> list[int]:
    """Token ids of one (prompt, response) conversation exactly as RewardTrainer makes them for a pair."""
    from annotate.schema import as_messages

    messages = as_messages(prompt) + [{"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]


def length_batches(lengths: list[int], max_rows: int, max_padding: float = 0.1) -> list[list[int]]:
    """Indices grouped into batches of similar length: each batch's padded size (rows x longest) stays within
    (1 + max_padding) x its real tokens, and at most `max_rows` rows.

    Sorted ascending, the next sequence is the longest of the batch it joins, so the bound is checked as it is added;
    a batch of one has no padding, so every sequence fits somewhere.
    """
    batches: list[list[int]] = []
    cur: list[int] = []
    real = 0
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        n = lengths[i]
        if cur and (len(cur) == max_rows or (len(cur) + 1) * n > (1 + max_padding) * (real + n)):
            batches.append(cur)
            cur, real = [], 0
        cur.append(i)
        real += n
    if cur:
        batches.append(cur)
    return batches


def last_token_scores(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Head output at each row's true last token: input_ids, attention_mask (B, L) right-padded -> (B,).

    The backbone runs once; the score head (a linear layer, applied per token by the model's own forward) is applied
    to the hidden state at position length-1 only.
    """
    import torch

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: the adapted model
    if not hasattr(inner, "score"):
        raise ValueError(f"{type(inner).__name__} has no `score` head: not a *ForSequenceClassification reward model")
    backbone = getattr(inner, inner.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state  # (B,L,H)
    last = attention_mask.sum(-1) - 1  # (B,)
    pooled = hidden[torch.arange(len(last), device=hidden.device), last]  # (B, H)
    return inner.score(pooled)[:, 0].float()  # (B,)


def score_ids(
    model: PreTrainedModel,
    ids: list[list[int]],
    batch_size: int = 32,
    max_padding: float = 0.1,
    desc: str | None = None,
) -> list[float]:
    """Reward of each token sequence, batched by length (see length_batches), in the input order."""
    import torch
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [0.0] * len(ids)
    try:
        for batch in tqdm(length_batches([len(x) for x in ids], batch_size, max_padding), desc=desc,
                          disable=desc is None, leave=False):  # fmt: skip
            width = max(len(ids[i]) for i in batch)
            # Right padding: real tokens never attend to it (causal), and the pad id is never read (lengths are).
            input_ids = torch.tensor([ids[i] + [0] * (width - len(ids[i])) for i in batch], device=device)
            mask = torch.tensor([[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in batch], device=device)
            with torch.no_grad():
                scores = last_token_scores(model, input_ids, mask).cpu().tolist()
            for i, s in zip(batch, scores):
                out[i] = s
    finally:
        model.train(was_training)
    return out


def score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict[str, str]] | str],
    responses: list[str],
    batch_size: int = 32,
    max_padding: float = 0.1,
    desc: str | None = None,
) -> list[float]:
    """Reward of each (prompt, response), formatted by the chat template exactly as RewardTrainer formats pairs and
    read at the conversation's last token. Batched by length: padding is at most `max_padding` of the real tokens."""
    if len(prompts) != len(responses):
        raise ValueError(f"score: {len(prompts)} prompts but {len(responses)} responses")
    ids = [conversation_ids(tokenizer, p, r) for p, r in zip(prompts, responses)]
    return score_ids(model, ids, batch_size, max_padding, desc)


def reward_function(model: PreTrainedModel, reward_tokenizer, policy_tokenizer, batch_size: int = 32):
    """A TRL reward function (RLOO's `reward_funcs`) scoring completions through `score`, as PPO and evaluate do.

    TRL would otherwise re-tokenize the chat-templated text itself and read the head at the last non-pad token.
    """

    def reward_model(prompts: list, completions: list, completion_ids: list[list[int]] | None = None, **_) -> list:
        if completion_ids is not None:  # the sampled ids, decoded as PPO decodes its rollouts
            texts = [response_text(policy_tokenizer, ids) for ids in completion_ids]
        else:
            texts = [(c[-1]["content"] if isinstance(c, list) else c).strip() for c in completions]
        return score(model, reward_tokenizer, prompts, texts, batch_size)

    return reward_model


def score_pool(pool: pa.Table, model_dir: str | Path, batch_size: int = 32, chunk: int = 4096) -> dict:
    """Reward of every pool candidate: {(prompt_id, response_id): float}, with a progress bar."""
    from tqdm import tqdm

    from rlhf.models import load_tokenizer

    rows = pool.select(["prompt_id", "prompt", "response_id", "response"]).to_pylist()
    tokenizer = load_tokenizer(str(model_dir))
    model = load_reward_model(str(model_dir), tokenizer)
    rewards: list[float] = []
    # Chunks of many batches: the bar moves, and score() still sorts each chunk by length before batching it.
    for start in tqdm(range(0, len(rows), chunk), desc=f"Scoring pool with {Path(model_dir).name}", unit="chunk"):
        part = rows[start : start + chunk]
        rewards += score(model, tokenizer, [r["prompt"] for r in part], [r["response"] for r in part], batch_size)
    return {(r["prompt_id"], r["response_id"]): x for r, x in zip(rows, rewards)}


def active_strategy(pool: pa.Table, model_dir: str | Path, **kw) -> ActiveStrategy:
    """annotate.active's strategy with this reward model's scores, re-scored by `refresh()` / `watch()`."""
    from annotate.active import ActiveStrategy

    return ActiveStrategy(score_pool(pool, model_dir), rescore=lambda: score_pool(pool, model_dir),
                          model_dir=model_dir, **kw)  # fmt: skip


def heldout_scores(model, tokenizer, test: Dataset, batch_size: int = 32) -> dict[str, Any]:
    """Rewards of the chosen and rejected responses of held-out pairs, scored in one length-sorted pass, and the
    response lengths in tokens: what heldout_report summarises (score once per model, report as often as needed)."""
    import numpy as np

    prompts = list(test["prompt"])
    chosen = [m[0]["content"] for m in test["chosen"]]
    rejected = [m[0]["content"] for m in test["rejected"]]
    rewards = np.array(score(model, tokenizer, prompts + prompts, chosen + rejected, batch_size))
    lengths = np.array([len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in chosen + rejected])
    return {"rewards": rewards, "lengths": lengths, "pairs": len(test)}


def report_from_scores(scored: dict[str, Any], length_coef: float = 0.0) -> dict[str, Any]:
    """Pairwise accuracy, mean margin and reward-vs-length correlation (Pearson, Spearman) from heldout_scores.

    `length_coef` (reward per response token) adds a fitted length term back, to report a joint fit with it.
    """
    from scipy import stats

    n = scored["pairs"]
    rewards = scored["rewards"] + length_coef * scored["lengths"]
    lengths = scored["lengths"]
    r_c, r_r = rewards[:n], rewards[n:]
    varied = rewards.std() > 0 and lengths.std() > 0  # correlation is undefined for a constant
    return {
        "eval_pairs": n,
        "eval_accuracy": float((r_c > r_r).mean() + 0.5 * (r_c == r_r).mean()),  # ties count half
        "eval_margin_mean": float((r_c - r_r).mean()),
        "eval_reward_mean": float(rewards.mean()),
        "eval_reward_std": float(rewards.std()),
        "eval_length_pearson": float(stats.pearsonr(rewards, lengths)[0]) if varied else None,
        "eval_length_spearman": float(stats.spearmanr(rewards, lengths)[0]) if varied else None,
    }


def heldout_report(model, tokenizer, test: Dataset, batch_size: int = 32, length_coef: float = 0.0) -> dict[str, Any]:
    """report_from_scores(heldout_scores(...)): held-out accuracy, margin and reward-length correlation."""
    return report_from_scores(heldout_scores(model, tokenizer, test, batch_size), length_coef)


def length_balanced(ds: Dataset, seed: int = 0, bins: int = 4) -> Dataset:
    """Resample so the chosen response is the longer in half the pairs, separately per |length difference| bin.

    The minority direction of each bin is oversampled (with replacement) up to the majority's count: nothing is
    thrown away, and a rater's length preference can no longer be read off the training pairs. Needs the
    chosen_len/rejected_len columns that rlhf.data.drop_long adds.
    """
    import numpy as np

    d = np.array(ds["chosen_len"]) - np.array(ds["rejected_len"])  # the prompt cancels in the difference
    rng = np.random.default_rng(seed)
    keep = list(np.flatnonzero(d == 0))
    nz = np.flatnonzero(d != 0)
    edges = np.quantile(np.abs(d[nz]), np.linspace(0, 1, bins + 1)[1:-1]) if len(nz) else []
    which = np.digitize(np.abs(d[nz]), edges)
    for b in range(bins):
        idx = nz[which == b]
        small, big = sorted((idx[d[idx] > 0], idx[d[idx] < 0]), key=len)
        keep += list(idx)
        if len(small):  # a bin with one direction only cannot be balanced by resampling
            keep += list(rng.choice(small, len(big) - len(small)))
    rng.shuffle(keep)
    return ds.select([int(i) for i in keep])


def chosen_longer_share(ds: Dataset) -> float | None:
    """P(chosen longer | lengths differ) in a set with chosen_len/rejected_len columns."""
    d = [c - r for c, r in zip(ds["chosen_len"], ds["rejected_len"]) if c != r]
    return sum(x > 0 for x in d) / len(d) if d else None


def length_debias_trainer(**kw):
    """A RewardTrainer whose Bradley-Terry logit has a learned length term, dropped at inference:

    loss = -log sigmoid(r(x, y_c) - r(x, y_r) + w * (len_c - len_r) / scale) + lambda * |Pearson(r, len)|

    The length term is the length control of Chatbot Arena's style-controlled Bradley-Terry
    (lmsys.org/blog/2024-08-28-style-control): w soaks up the part of the preference that length explains. On its
    own it does not stop r from learning length too (a network counts tokens as easily as w does), so, as in ODIN
    (Chen et al. 2024, arXiv 2402.07319), a penalty on the batch correlation of r with length keeps r length-free.
    `kw` adds length_scale, length_lr and decorrelation (lambda).
    """
    import torch
    from torch import nn
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState
    from trl import RewardTrainer

    class LengthWeightState(TrainerCallback, ExportableState):
        """w through checkpoints and steps. Being no model weight, it rides in trainer_state.json (written as the
        checkpoint's last file) and a resumed run restores it when training begins. The Trainer zeroes only the
        model's gradients after each optimizer step, so w's is zeroed here: otherwise it would add up over all
        steps (it did before; the length-debiasing figures in BENCHMARKS.md dated before 2026-12-02 had that)."""

        def __init__(self, trainer: LengthDebiasTrainer):
            self.trainer = trainer

        def state(self) -> dict:
            return {"args": {}, "attributes": {"length_w": self.trainer.length_w.item()}}

        def on_train_begin(self, args, state, control, **kwargs):
            saved = state.stateful_callbacks.get(type(self).__name__)
            if saved:  # the checkpoint's value under --resume, the initial one otherwise
                with torch.no_grad():
                    self.trainer.length_w.fill_(saved["attributes"]["length_w"])

        def on_step_end(self, args, state, control, **kwargs):
            self.trainer.length_w.grad = None  # after the optimizer step, as the Trainer does for the model

    class LengthDebiasTrainer(RewardTrainer):
        def __init__(self, *args, length_scale: float, length_lr: float, decorrelation: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.length_scale, self.length_lr, self.decorrelation = length_scale, length_lr, decorrelation
            # Not a model parameter, so save_pretrained() writes a plain reward model: dropped at inference.
            self.length_w = nn.Parameter(torch.zeros((), device=next(self.model.parameters()).device))
            self.add_callback(LengthWeightState(self))

        def create_optimizer(self, model=None):
            opt = super().create_optimizer(model)
            if all(p is not self.length_w for g in opt.param_groups for p in g["params"]):
                # Its own (larger) rate: one scalar at the backbone's 1e-5 would barely move in a run.
                opt.add_param_group({"params": [self.length_w], "lr": self.length_lr, "weight_decay": 0.0})
            return opt

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            inputs["use_cache"] = False
            outputs = model(**inputs)
            rewards = outputs.logits.squeeze(-1)  # (2B,): chosen then rejected
            r_c, r_r = torch.chunk(rewards, chunks=2)  # (B,), (B,)
            # Sequence lengths (2B,): prompt + response; the prompt's tokens cancel in the difference.
            lengths = inputs["attention_mask"].sum(-1).float() / self.length_scale
            l_c, l_r = torch.chunk(lengths, chunks=2)
            logit = r_c - r_r + self.length_w * (l_c - l_r)
            if "margin" in inputs:
                logit = logit - inputs["margin"]
            loss = -nn.functional.logsigmoid(logit).mean()
            if self.decorrelation > 0 and lengths.std() > 0:
                r0, l0 = rewards - rewards.mean(), lengths - lengths.mean()
                corr = (r0 * l0).sum() / (r0.norm() * l0.norm() + 1e-8)
                loss = loss + self.decorrelation * corr.abs()
            if self.args.center_rewards_coefficient is not None:
                loss = loss + self.args.center_rewards_coefficient * torch.mean((r_c + r_r) ** 2)
            with torch.no_grad():
                self._metrics[mode]["accuracy"].append((r_c > r_r).float().mean().item())  # r alone
                self._metrics[mode]["margin"].append((r_c - r_r).mean().item())
                self._metrics[mode]["length_weight"].append(self.length_w.item())
            return (loss, outputs) if return_outputs else loss

    return LengthDebiasTrainer(**kw)


def training_tokenizer(tokenizer: PreTrainedTokenizerBase, example: dict) -> PreTrainedTokenizerBase:
    """The tokenizer RewardTrainer gets: `tokenizer`, or a copy whose pad token is not the conversations' last token.

    RewardTrainer pads with the pad id and its head reads the rightmost token that is not the pad id. A template that
    ends every conversation with the pad token (pad == eos, and a template ending in eos, as Llama-3's does) would
    make training read the token before it while score() reads the last one; with another pad both read the last.
    """
    import copy

    final = conversation_ids(tokenizer, example["prompt"], example["chosen"][0]["content"])[-1]
    if tokenizer.pad_token_id != final:
        return tokenizer  # ChatML (SmolLM2): conversations end with "\n" after <|im_end|>, never the pad
    for pad in (tokenizer.unk_token, tokenizer.bos_token, *tokenizer.all_special_tokens, *tokenizer.get_vocab()):
        if pad is not None and tokenizer.convert_tokens_to_ids(pad) != final:
            break
    out = copy.deepcopy(tokenizer)
    out.pad_token = pad  # only pads training batches: masked out, and never the last real token
    print(f"[reward] the chat template ends with the pad token {tokenizer.pad_token!r}; training pads with {pad!r}")
    return out


def build_trainer(cfg: RewardArgs):
    """(trainer, tokenizer, held-out set, data info): everything prepared, nothing trained yet."""
    from trl import RewardConfig, RewardTrainer

    from rlhf.data import trainer_columns

    tokenizer, train, test, info = load_data(cfg)
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
    info["train"]["chosen_longer_share"] = chosen_longer_share(train)
    if cfg.length_debias == "resample":
        train = length_balanced(train, cfg.seed)
        info["train"]["chosen_longer_share_resampled"] = chosen_longer_share(train)
        info["train"]["pairs_resampled"] = len(train)
    kw = dict(
        model=model,
        args=args,
        train_dataset=trainer_columns(train),
        processing_class=training_tokenizer(tokenizer, train[0]),
        peft_config=peft_config,
        callbacks=[metrics_callback(cfg.output_dir)],
    )
    if cfg.length_debias == "joint":
        import numpy as np

        # Scale: one standard deviation of the length difference, so w is O(1) whatever the data.
        spread = float(np.std(np.array(train["chosen_len"]) - np.array(train["rejected_len"])))
        trainer = length_debias_trainer(
            length_scale=spread or 1.0, length_lr=cfg.length_lr, decorrelation=cfg.length_decorrelation, **kw
        )
    else:
        trainer = RewardTrainer(**kw)
    if cfg.packing:
        from rlhf.packing import enable_packed_reward

        # Under LoRA, patch the wrapped transformers model: peft's forward ends up calling its forward.
        inner = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
        enable_packed_reward(inner, row_tokens(cfg))
    return trainer, tokenizer, test, info


class RewardRun(TrainerRun):
    """No "before" figures: an untrained head is a random projection, its held-out accuracy says nothing. After
    training, the held-out pairs are scored once, by the saved model, and every report reuses those scores."""

    command, config_class = "reward", RewardArgs

    def build(self) -> Any:
        trainer, self.tokenizer, self.test, self.info = build_trainer(self.cfg)
        return trainer

    def save(self, out: Path) -> None:
        model = self.trainer.model
        if self.cfg.lora_r > 0:
            model = model.merge_and_unload()  # a plain checkpoint that score() and the other commands load directly
        model.config.pad_token_id = self.tokenizer.pad_token_id  # training may have padded with another token
        if is_main_process():
            model.save_pretrained(out)
            self.tokenizer.save_pretrained(out)
        self.model = model

    def results(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        cfg = self.cfg
        scored = heldout_scores(self.model, self.tokenizer, self.test, cfg.score_batch_size)
        results = report_from_scores(scored)
        results["length_debias"] = cfg.length_debias
        if cfg.length_debias == "joint":
            coef = float(self.trainer.length_w.detach()) / self.trainer.length_scale  # reward per token of length
            full = report_from_scores(scored, length_coef=coef)
            results["length_weight_per_token"] = coef
            results["eval_accuracy_with_length_term"] = full["eval_accuracy"]
            results["eval_length_spearman_with_length_term"] = full["eval_length_spearman"]
        return results | {f"train_{k}": v for k, v in self.info["train"].items()}

    def about(self) -> str:
        return "A reward model (sequence classification, one output) trained on pairwise preferences."

    def summary(self, results: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> str:
        lines = [f"[reward] held-out accuracy {results['eval_accuracy']:.3f} on {results['eval_pairs']} pairs; "
                 f"reward~length Spearman {results['eval_length_spearman']}"]  # fmt: skip
        if self.cfg.length_debias == "joint":
            lines.append(f"[reward] length term (dropped at inference): {results['length_weight_per_token']:.4g} per "
                         f"token; with it, held-out reward~length Spearman "
                         f"{results['eval_length_spearman_with_length_term']}")  # fmt: skip
        return "\n".join(lines)


def run(cfg: RewardArgs) -> dict[str, Any]:
    """Train, save, and evaluate on held-out pairs; returns the held-out results."""
    return RewardRun(cfg).run()


def main(argv: list[str] | None = None) -> int:
    return RewardRun.main(argv)
