"""`python rlhf/train.py reward`: a Bradley-Terry reward model on collected comparisons (TRL RewardTrainer).

The model is the base LM with a one-output sequence-classification head, trained on
loss = -log sigmoid(r(x, y_chosen) - r(x, y_rejected))  (Eq. 1 of Ouyang et al. 2022, arXiv 2203.02155),
optionally through LoRA adapters. After training it reports, on held-out prompts, pairwise accuracy, the
correlation of reward with response length (the verbosity check: a reward that mostly counts tokens is a bug) and
the length ruler (annotate.audit_ruler): on the same pairs, the accuracy of "pick the longer", "pick the shorter" and
a style-only model fitted on the training pairs, with a flag when the model is not clearly above the best of them.
`--length-debias` counters raters' taste for length and style in the training pairs (rlhf/reward_debias.py):
`resample` balances the data; `joint`, `odin` and `poe` train something beside the reward that absorbs length
(a length term; a length head; a bias-only model on style features) and drop it at inference. `--heads` trains a
head per criterion on one body and `--objective` weighs them into the one score (rlhf/reward_heads.py).
`--label-trust` (on by default where the data has p_chosen) trains every one of them on soft labels or weighted
pairs (rlhf/label_trust.py).
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
from rlhf.label_trust import LabelTrustArgs, mode_of
from rlhf.reward_report import dropped_term_report, heads_report, report_from_scores, summary_lines
from rlhf.sampling import response_text  # sampled ids -> the text scored (also importable from here)
from rlhf.skeleton import TrainerRun

if TYPE_CHECKING:
    import pyarrow as pa
    import torch
    from datasets import Dataset
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from annotate.active import ActiveStrategy


METHODS = ("none", "resample", "joint", "odin", "poe")  # --length-debias (rlhf/reward_debias.py)


@dataclass
class RewardArgs(ResumeArgs, PackingArgs, LabelTrustArgs, BaseArgs):
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
            "length-difference bin); joint (a length term fitted with the reward, dropped at inference); odin "
            "(quality and length heads, the length head dropped; Chen et al. 2024); poe (product of experts with a "
            "bias-only model on length and style features, dropped; Shen et al. 2023)",
            "choices": list(METHODS),
        },
    )
    length_lr: float = field(
        default=1e-2, metadata={"help": "joint/poe: learning rate of the length weight / bias model (poe: 0 freezes)"}
    )
    length_decorrelation: float = field(
        default=1.0, metadata={"help": "joint: weight of the |Pearson(reward, length)| penalty per batch (ODIN)"}
    )
    odin_length_weight: float = field(
        default=0.1,
        metadata={"help": "odin: weight lambda_L of the length loss (1.0 swamped the ranking loss in tests)"},
    )
    odin_orthogonality: float = field(
        default=1.0, metadata={"help": "odin: weight lambda_O of the orthogonality loss between the two heads"}
    )
    heads: str | None = field(
        default=None,
        metadata={"help": "a head per criterion on one body, e.g. overall,correct,helpful,harmless,concise: each "
                  "learns from the pairs carrying its pick (export's criterion_* columns; rlhf/reward_heads.py)"},
    )  # fmt: skip
    objective: str | None = field(
        default=None,
        metadata={"help": "with --heads: the heads' weights saved as the model's score, e.g. 'correct=2,overall=1' "
                  "(default: overall=1; ppo, rloo and evaluate may override it)"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        from rlhf.reward_heads import check_options

        check_options(self.heads, self.objective, self.length_debias)
        self.label_trust = mode_of(self.label_trust)


def load_reward_model(
    name_or_path: str,
    tokenizer: PreTrainedTokenizerBase | None = None,
    num_labels: int = 1,
    objective: str | None = None,
) -> PreTrainedModel:
    """A sequence-classification model with one output: a multi-head model (`reward --heads`) comes with its heads
    folded into that output by `objective` ('correct=2,overall=1'; None: the one saved with it), a UsageError for a
    one-head model. `num_labels` > 1 asks for every output instead (odin's two and --heads' K while training; the
    head is new when loading a plain LM)."""
    from transformers import AutoModelForSequenceClassification

    from rlhf.models import resolve_model
    from rlhf.reward_heads import fold_objective, heads_of

    path = resolve_model(name_or_path)
    heads = heads_of(path, objective, str(name_or_path))
    outputs = len(heads["heads"]) if heads and num_labels == 1 else num_labels
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=outputs)
    if heads and num_labels == 1:
        fold_objective(model, heads, objective, str(name_or_path))
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


def last_token_scores(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, all_heads: bool = False
) -> torch.Tensor:
    """Head output at each row's true last token: input_ids, attention_mask (B, L) right-padded -> (B,), or with
    `all_heads` (B, K), every output of a K-output head (an unfolded multi-head model, rlhf/reward_heads.py).

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
    out = inner.score(pooled).float()  # (B, K)
    if all_heads:
        return out
    if out.shape[-1] != 1:  # reading output 0 alone would silently score one head
        raise ValueError(f"the score head has {out.shape[-1]} outputs: load the model with load_reward_model")
    return out[:, 0]  # (B,)


def score_ids(
    model: PreTrainedModel,
    ids: list[list[int]],
    batch_size: int = 32,
    max_padding: float = 0.1,
    desc: str | None = None,
    all_heads: bool = False,
) -> list[float] | list[list[float]]:
    """Reward of each token sequence, batched by length (see length_batches), in the input order (with `all_heads`,
    the list of every head's output per sequence)."""
    import torch
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list = [0.0] * len(ids)
    try:
        for batch in tqdm(length_batches([len(x) for x in ids], batch_size, max_padding), desc=desc,
                          disable=desc is None, leave=False):  # fmt: skip
            width = max(len(ids[i]) for i in batch)
            # Right padding: real tokens never attend to it (causal), and the pad id is never read (lengths are).
            input_ids = torch.tensor([ids[i] + [0] * (width - len(ids[i])) for i in batch], device=device)
            mask = torch.tensor([[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in batch], device=device)
            with torch.no_grad():
                scores = last_token_scores(model, input_ids, mask, all_heads).cpu().tolist()
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
    all_heads: bool = False,
) -> list[float] | list[list[float]]:
    """Reward of each (prompt, response), formatted by the chat template exactly as RewardTrainer formats pairs and
    read at the conversation's last token. Batched by length: padding is at most `max_padding` of the real tokens.
    `all_heads`: every output of an unfolded multi-head model (see last_token_scores)."""
    if len(prompts) != len(responses):
        raise ValueError(f"score: {len(prompts)} prompts but {len(responses)} responses")
    ids = [conversation_ids(tokenizer, p, r) for p, r in zip(prompts, responses)]
    return score_ids(model, ids, batch_size, max_padding, desc, all_heads)


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


def score_pool(
    pool: pa.Table, model_dir: str | Path, batch_size: int = 32, chunk: int = 4096, objective: str | None = None
) -> dict:
    """Reward of every pool candidate: {(prompt_id, response_id): float}, with a progress bar. `objective`: the
    weights of a multi-head model's heads (None: its saved ones)."""
    from tqdm import tqdm

    from rlhf.models import load_tokenizer

    rows = pool.select(["prompt_id", "prompt", "response_id", "response"]).to_pylist()
    tokenizer = load_tokenizer(str(model_dir))
    model = load_reward_model(str(model_dir), tokenizer, objective=objective)
    rewards: list[float] = []
    # Chunks of many batches: the bar moves, and score() still sorts each chunk by length before batching it.
    for start in tqdm(range(0, len(rows), chunk), desc=f"Scoring pool with {Path(model_dir).name}", unit="chunk"):
        part = rows[start : start + chunk]
        rewards += score(model, tokenizer, [r["prompt"] for r in part], [r["response"] for r in part], batch_size)
    return {(r["prompt_id"], r["response_id"]): x for r, x in zip(rows, rewards)}


def active_strategy(pool: pa.Table, model_dir: str | Path, objective: str | None = None, **kw) -> ActiveStrategy:
    """annotate.active's strategy with this reward model's scores (a multi-head model's by `objective`), re-scored
    by `refresh()` / `watch()`."""
    from annotate.active import ActiveStrategy

    rescore = lambda: score_pool(pool, model_dir, objective=objective)  # noqa: E731
    return ActiveStrategy(rescore(), rescore=rescore, model_dir=model_dir, **kw)


def heldout_scores(
    model, tokenizer, test: Dataset, batch_size: int = 32, weights: list[float] | None = None
) -> dict[str, Any]:
    """Rewards of the chosen and rejected responses of held-out pairs, scored in one length-sorted pass, and the
    response lengths in tokens: what heldout_report summarises (score once per model, report as often as needed).
    `weights`: the model is an unfolded multi-head one; `head_rewards` (2N, K) holds every head's output and
    `rewards` their weighted sum, what the folded model scores."""
    import numpy as np

    prompts = list(test["prompt"])
    chosen = [m[0]["content"] for m in test["chosen"]]
    rejected = [m[0]["content"] for m in test["rejected"]]
    out = np.array(score(model, tokenizer, prompts + prompts, chosen + rejected, batch_size,
                         all_heads=weights is not None))  # fmt: skip
    heads = {} if weights is None else {"head_rewards": out.reshape(-1, len(weights))}
    rewards = out if weights is None else heads["head_rewards"] @ np.asarray(weights, dtype=float)
    lengths = np.array([len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in chosen + rejected])
    return {"rewards": rewards, "lengths": lengths, "pairs": len(test), **heads}


def heldout_report(model, tokenizer, test: Dataset, batch_size: int = 32, length_coef: float = 0.0) -> dict[str, Any]:
    """report_from_scores(heldout_scores(...)): held-out accuracy, margin and reward-length correlation."""
    return report_from_scores(heldout_scores(model, tokenizer, test, batch_size), length_coef)


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


def responses(ds: Dataset) -> tuple[list[str], list[str]]:
    """The chosen and the rejected response texts of a preference set, pair by pair."""
    return [m[-1]["content"] for m in ds["chosen"]], [m[-1]["content"] for m in ds["rejected"]]


def build_trainer(cfg: RewardArgs):
    """(trainer, tokenizer, held-out set, data info, style model): everything prepared, nothing trained yet.

    The style model is the length ruler's style-only model, fitted on the training pairs as collected (before any
    resampling): the ruler's baseline at evaluation, and poe's bias expert at the start of training."""
    from transformers import set_seed
    from trl import RewardConfig

    from annotate.audit_ruler import fit_style_model
    from rlhf.data import REQUIRED, trainer_columns
    from rlhf.label_trust import prepare as with_label_trust
    from rlhf.reward_debias import chosen_longer_share, debias_trainer, length_balanced, with_debias_columns
    from rlhf.reward_heads import LABELS, parse_heads, with_head_labels
    from rlhf.reward_heads_trainer import HeadsTrainer

    tokenizer, train, test, info = load_data(cfg)
    train, _, label_column, info["label_trust"] = with_label_trust(cfg.label_trust, train)
    style = fit_style_model(*responses(train))
    set_seed(cfg.seed)  # the new score head is drawn here: same seed, same run
    heads = parse_heads(cfg.heads) if cfg.heads else ()
    outputs = len(heads) or (2 if cfg.length_debias == "odin" else 1)
    model = load_reward_model(cfg.model, tokenizer, num_labels=outputs)
    if outputs > 1:
        if not hasattr(model, "score"):
            raise ValueError(f"{type(model).__name__} has no `score` head to give {outputs} outputs")
        # TRL accepts only a one-label config; the head keeps its rows (drawn by the model's own init) until save
        # keeps odin's quality row, or names the heads. Checkpoints written while training hold every row.
        model.config.num_labels = 1
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
    train = with_debias_columns(train, cfg.length_debias, style)
    if heads:
        train, labelled = with_head_labels(train, heads)
        info["train"] |= {f"head_pairs_{h}": n for h, n in labelled.items()}
    kw = dict(
        model=model,
        args=args,
        train_dataset=trainer_columns(train, (*REQUIRED, "response_lengths", "style", LABELS, label_column)),
        processing_class=training_tokenizer(tokenizer, train[0]),
        peft_config=peft_config,
        callbacks=[metrics_callback(cfg.output_dir)],
        **({"label_column": label_column} if label_column else {}),  # soft labels or weights: our trainers only
    )
    trainer = HeadsTrainer(heads=heads, **kw) if heads else debias_trainer(cfg, kw, train, style)
    if cfg.packing:
        from rlhf.packing import enable_packed_reward

        # Under LoRA, patch the wrapped transformers model: peft's forward ends up calling its forward.
        inner = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
        enable_packed_reward(inner, row_tokens(cfg))
    return trainer, tokenizer, test, info, style


class RewardRun(TrainerRun):
    """No "before" figures: an untrained head is a random projection, its held-out accuracy says nothing. After
    training, the held-out pairs are scored once, by the saved model, and every report reuses those scores."""

    command, config_class = "reward", RewardArgs

    def build(self) -> Any:
        trainer, self.tokenizer, self.test, self.info, self.style = build_trainer(self.cfg)
        return trainer

    def save(self, out: Path) -> None:
        model = self.trainer.model
        if self.cfg.lora_r > 0:
            model = model.merge_and_unload()  # a plain checkpoint that score() and the other commands load directly
        if self.cfg.length_debias == "odin":
            from rlhf.reward_debias import keep_quality_head

            self.length_head = keep_quality_head(model)  # the saved model scores quality only
        model.config.pad_token_id = self.tokenizer.pad_token_id  # training may have padded with another token
        if is_main_process():
            if self.cfg.heads:
                from rlhf.reward_heads import training_objective, write_heads

                write_heads(model, out, *training_objective(self.cfg.heads, self.cfg.objective))  # num_labels = K
            model.save_pretrained(out)
            self.tokenizer.save_pretrained(out)
        self.model = model

    def results(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        from annotate.audit_ruler import length_ruler
        from rlhf.reward_heads import training_objective

        cfg = self.cfg
        # --heads: every head scored in one pass; their objective-weighted sum is what the saved model scores
        heads, objective = training_objective(cfg.heads, cfg.objective) if cfg.heads else ((), {})
        weights = [objective.get(h, 0.0) for h in heads] if heads else None
        scored = heldout_scores(self.model, self.tokenizer, self.test, cfg.score_batch_size, weights)
        results = report_from_scores(scored)
        results["length_debias"] = cfg.length_debias
        results["label_trust"] = self.info["label_trust"]
        length_head = None
        if cfg.length_debias == "odin":  # the dropped head, scored through the one path, then put back
            quality, self.model.score = self.model.score, self.length_head
            try:
                length_head = heldout_scores(self.model, self.tokenizer, self.test, cfg.score_batch_size)
            finally:
                self.model.score = quality
        results |= dropped_term_report(cfg.length_debias, self.trainer, self.style, responses(self.test), scored,
                                       length_head)  # fmt: skip
        results |= length_ruler(self.style, *responses(self.test), results["eval_accuracy"])
        if heads:
            results |= heads_report(scored["head_rewards"], self.test, heads, objective)
        return results | {f"train_{k}": v for k, v in self.info["train"].items()}

    def about(self) -> str:
        if self.cfg.heads:
            return (f"A reward model with a head per criterion ({self.cfg.heads}) on one body, trained on pairwise "
                    "preferences; it scores the objective-weighted sum of its heads.")  # fmt: skip
        return "A reward model (sequence classification, one output) trained on pairwise preferences."

    def summary(self, results: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> str:
        return summary_lines(results)


def run(cfg: RewardArgs) -> dict[str, Any]:
    """Train, save, and evaluate on held-out pairs; returns the held-out results."""
    return RewardRun(cfg).run()


def main(argv: list[str] | None = None) -> int:
    return RewardRun.main(argv)
