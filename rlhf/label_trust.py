"""`--label-trust`: train on how sure the votes are about each pair, not only on which side won (issue 16).

`annotate export` writes two per-pair columns (annotate/export.py, annotate/reliability.py): p_chosen, the
probability that the chosen response is the better one (>= 0.5: the vote share under `--aggregate majority`, the
Dawid-Skene posterior under `dawid-skene`), and weight = 2 p_chosen - 1. TRL's trainers ignore both; `reward` and
`dpo` read one of them:

    on      soft labels (the default wherever the data has p_chosen). Each pair's loss is the expected loss over its
            label, l(d) with probability p and the reversed pair's l(-d) with 1 - p:
                loss_i = p_i * l(d_i) + (1 - p_i) * l(-d_i)
            reward: d = r(x, y_c) - r(x, y_r), l(d) = -log sigmoid(d), so
                loss_i = -[p_i log sigmoid(d_i) + (1 - p_i) log sigmoid(-d_i)]
            the cross-entropy of the Bradley-Terry probability sigmoid(d) (Bradley & Terry 1952) against the soft
            target p_i; p_i = 1 is the reward-model loss of Ouyang et al. 2022 (arXiv 2203.02155, Eq. 1). Its slope
            sigmoid(d) - p_i vanishes at sigmoid(d) = p_i: the model is asked to be as sure as the votes, and a pair
            with p_i = 0.5 only pulls d back to 0, from either side (no direction).
            dpo: d = the loss's logit, and with l(d) = -log sigmoid(d) this is conservative DPO (cDPO; Mitchell 2023,
            "A note on DPO with noisy preferences & relationship to IPO") with a label-flip rate eps_i = 1 - p_i per
            pair rather than one for the data set. TRL 1.16's `sigmoid` loss no longer reads `label_smoothing` (only
            robust, exo_pair and aot do), so cDPO is computed here (rlhf/dpo_losses.py). The same expectation serves
            every loss: for ipo (l(d) = (d - 1/(2 beta))^2) it moves the target from 1/(2 beta) to
            (2 p_i - 1)/(2 beta), the minimiser of IPO's loss for preference probability p_i (Azar et al. 2023, arXiv
            2310.12036, Eq. 17 in expectation over the label); for simpo the margin gamma applies in both orders.
    weight  each pair's hard-label loss times weight_i = 2 p_i - 1 in [0, 1] (derived from p_chosen when the data has
            no weight column): at d = 0 it has the soft label's slope, without the soft label's pull of confident
            pairs back toward d = 0. Batch losses stay means over pairs, so a batch of doubtful pairs takes a smaller
            step and gradient accumulation changes nothing.
    off     hard labels: the columns are ignored, and the trainers are TRL's as before.

Data without p_chosen (or with p_chosen 1 everywhere: one vote per pair, as imported HH) trains on hard labels
whatever the mode, through TRL's own loss. A missing value in the column counts as a hard label (1). Which mode a
run used, and why, is `label_trust` in eval.json and the model card.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from annotate.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from datasets import Dataset

MODES = ("on", "weight", "off")
P_CHOSEN, WEIGHT = "p_chosen", "weight"
COLUMNS = (P_CHOSEN, WEIGHT)  # the per-pair columns a trainer may carry (never model inputs)


@dataclass
class LabelTrustArgs:
    """How much each pair's label is trusted (reward and dpo)."""

    # str | bool: YAML reads an unquoted `on`/`off` in a recipe as a boolean, and so does the flag's converter;
    # __post_init__ of the command's config turns either back into a mode (mode_of).
    label_trust: str | bool = field(
        default="on",
        metadata={"help": "on: soft labels from the data's p_chosen (Bradley-Terry / cDPO with a soft target); "
                  "weight: hard labels weighted by 2 p_chosen - 1; off: ignore both (rlhf/label_trust.py)"},
    )  # fmt: skip


def mode_of(value: str | bool) -> str:
    """--label-trust's value as one of MODES (True is on, False off); anything else is a UsageError."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value not in MODES:
        raise UsageError(f"--label-trust: must be one of {', '.join(MODES)}, got {value!r}")
    return value


def label_column(mode: str, columns: list[str] | tuple[str, ...]) -> str | None:
    """The column the loss reads under `mode`, given the data's columns (None: hard labels)."""
    mode = mode_of(mode)
    if mode == "on" and P_CHOSEN in columns:
        return P_CHOSEN
    if mode == "weight" and (WEIGHT in columns or P_CHOSEN in columns):
        return WEIGHT
    return None


def _values(ds: Dataset, column: str, name: str) -> list[float]:
    """The column as floats (missing -> a hard label), refused when out of [0, 1] (naming the row)."""
    import math

    source = column if column in ds.column_names else P_CHOSEN  # weight derived from p_chosen
    out = []
    for i, x in enumerate(ds[source]):
        v = 1.0 if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
        v = 2.0 * v - 1.0 if source != column else v
        if not 0.0 <= v <= 1.0:
            what = f"{source} {x}" + (" (weight 2 p_chosen - 1 < 0)" if source != column else "")
            raise UsageError(f"--label-trust {'on' if column == P_CHOSEN else 'weight'}: {name} pair {i}: {what} "
                             "is outside [0, 1]")  # fmt: skip
        out.append(v)
    return out


def prepare(mode: str, train: Dataset, test: Dataset | None = None) -> tuple[Dataset, Dataset | None, str | None, str]:
    """(train, test, the column the trainer carries or None, the record for eval.json).

    The carried column holds clean floats in [0, 1] under its own name (`weight` is derived from p_chosen where
    absent); the other per-pair column is dropped. `test` gets the same column, 1 where it has none (its loss, which
    only DPO's evaluation computes, then uses its labels as given). All-hard data goes through TRL's own loss."""
    mode = mode_of(mode)
    column = label_column(mode, train.column_names)
    if column is None:
        why = "off" if mode == "off" else f"off: the data has no {P_CHOSEN} column (hard labels)"
        return train, test, None, why
    values = _values(train, column, "train")
    if all(v == 1.0 for v in values):
        return train, test, None, f"{mode}: every pair has {P_CHOSEN} 1 (hard labels, TRL's own loss)"

    def with_column(ds: Dataset, vals: list[float]) -> Dataset:
        ds = ds.remove_columns([c for c in COLUMNS if c in ds.column_names])
        return ds.add_column(column, vals)

    train = with_column(train, values)
    if test is not None:
        has = column in test.column_names or (column == WEIGHT and P_CHOSEN in test.column_names)
        test = with_column(test, _values(test, column, "test") if has else [1.0] * len(test))
    mean = sum(values) / len(values)
    return train, test, column, f"{mode}: per-pair {column} (train mean {mean:.3f})"


def pair_loss(loss: Callable[[torch.Tensor], torch.Tensor], d: torch.Tensor, labels: dict[str, Any]) -> torch.Tensor:
    """Per-pair losses (B,) of a pairwise loss `loss` (elementwise, on the preference logit d (B,)) under the pairs'
    labels: {"p_chosen": (B,)} soft, {"weight": (B,)} weighted, {} hard (the module doc has the equations)."""
    if P_CHOSEN in labels:
        p = labels[P_CHOSEN].to(d.dtype)
        return p * loss(d) + (1.0 - p) * loss(-d)
    if WEIGHT in labels:
        return labels[WEIGHT].to(d.dtype) * loss(d)
    return loss(d)


def bt_pair_loss(d: torch.Tensor, labels: dict[str, Any]) -> torch.Tensor:
    """The Bradley-Terry reward-model loss per pair, -log sigmoid(d) (Ouyang et al. 2022, Eq. 1), under the labels:
    soft, -[p log sigmoid(d) + (1 - p) log sigmoid(-d)]; weighted, -w log sigmoid(d)."""
    import torch.nn.functional as F

    return pair_loss(lambda x: -F.logsigmoid(x), d, labels)


def labels_of(inputs: dict[str, Any]) -> dict[str, Any]:
    """The per-pair label columns a batch carries (what pair_loss reads), never passed to a model."""
    return {c: inputs[c] for c in COLUMNS if c in inputs}


def model_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """The batch without the label columns: what a model's forward takes."""
    return {k: v for k, v in inputs.items() if k not in COLUMNS}
