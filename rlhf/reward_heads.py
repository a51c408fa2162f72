"""`reward --heads overall,correct,...`: one reward model body with a head per criterion, and the objective that
weighs the heads wherever the model scores.

Heads: `overall` learns from every pair (the annotators' choice); each criterion of annotate.schema.CRITERIA
learns from the pairs whose export column criterion_<name> holds a pick (+1 / -1; 0 and null carry none), the
verifier's verdict for `correct` where one decided (annotate/criteria.py). The loss is in
rlhf/reward_heads_trainer.py; this module is what every command needs without the trainer (no torch at import).

The model folder: the `score` layer keeps one output row per head (config.json: num_labels, id2label naming them)
and HEADS_FILE records the heads and the default objective, {"heads": [...], "objective": {head: weight}}.
load_reward_model (rlhf/reward.py) folds the objective into a one-output `score`, sum_k w_k * (W_k h + b_k), which
is itself a linear layer: every scorer downstream (PPO, RLOO, GRPO, evaluate, active sampling, the value model PPO
starts from it) sees a plain one-output reward model. `--objective "correct=2,overall=1"` on reward sets the saved
default; on ppo, rloo and evaluate it overrides it for that run; heads it leaves out weigh 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotate.errors import UsageError
from annotate.schema import CRITERIA

if TYPE_CHECKING:
    import numpy as np
    from datasets import Dataset
    from torch import nn
    from transformers import PreTrainedModel

HEADS = ("overall", *CRITERIA)
HEADS_FILE = "reward_heads.json"
LABELS = "head_labels"  # the training column: (K,) per pair, +1 chosen better, -1 rejected better, 0 no label


def parse_heads(text: str) -> tuple[str, ...]:
    """'overall,correct' -> ('overall', 'correct'); an unknown or repeated head is a UsageError naming it."""
    heads = tuple(h.strip() for h in text.split(","))
    for h in heads:
        if h not in HEADS:
            raise UsageError(f"--heads: unknown head {h!r} (known: {', '.join(HEADS)})")
    if len(set(heads)) != len(heads):
        raise UsageError(f"--heads: a head is named twice in {text!r}")
    return heads


def parse_objective(text: str, heads: Sequence[str] = HEADS, where: str = "the heads") -> dict[str, float]:
    """'correct=2,overall=1' -> {'correct': 2.0, 'overall': 1.0}: the one parser of --objective (and the recipe
    key). A head outside `heads` (`where` says whose they are), a bad number or all-zero weights is a UsageError
    naming it."""
    out: dict[str, float] = {}
    for part in str(text).split(","):
        name, sep, value = (x.strip() for x in part.partition("="))
        if name not in heads:
            raise UsageError(f"--objective: {name!r} is not one of {where} ({', '.join(heads)})")
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not sep or not math.isfinite(weight):
            raise UsageError(f"--objective: {part.strip()!r} is not HEAD=WEIGHT with a finite number")
        if name in out:
            raise UsageError(f"--objective: head {name!r} is given twice")
        out[name] = weight
    if not any(out.values()):
        raise UsageError(f"--objective: every weight in {text!r} is 0: the reward would be 0 for every response")
    return out


def format_objective(objective: Mapping[str, float]) -> str:
    """The --objective text of a weights mapping ('correct=2,overall=1')."""
    return ",".join(f"{h}={w:g}" for h, w in objective.items())


def default_objective(heads: Sequence[str]) -> dict[str, float]:
    """overall alone when it is a head (the reward a single-head model gives), else every head equally."""
    return {"overall": 1.0} if "overall" in heads else dict.fromkeys(heads, 1.0)


def training_objective(heads: str, objective: str | None) -> tuple[tuple[str, ...], dict[str, float]]:
    """reward's (heads, objective) from its --heads and --objective (the default objective when none is given)."""
    names = parse_heads(heads)
    return names, parse_objective(objective, names, "the --heads") if objective else default_objective(names)


def check_options(heads: str | None, objective: str | None, length_debias: str) -> None:
    """reward's --heads / --objective, checked when the config is built (exit 2 before anything loads)."""
    if heads is None:
        if objective is not None:
            raise UsageError("--objective weighs the heads of --heads; a one-head reward model has none")
        return
    names = parse_heads(heads)
    if length_debias not in ("none", "resample"):
        # joint, odin and poe fit their own term or head beside the one reward; with K heads it is not defined whose
        raise UsageError(f"--heads combines with --length-debias none or resample, not {length_debias}")
    if objective is not None:
        parse_objective(objective, names, "the --heads")


@dataclass
class ObjectiveArgs:
    """The --objective flag of the commands that score with a reward model (ppo, rloo, evaluate; grpo)."""

    objective: str | None = field(
        default=None,
        metadata={"help": "weights of a multi-head reward model's heads, e.g. 'correct=2,overall=1' (default: the "
                  "one saved with it; heads left out weigh 0)"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.objective is not None:
            parse_objective(self.objective)  # the syntax and names now; the model's own heads when it loads


# -- the model folder ---------------------------------------------------------------------------------------------
def read_heads(name_or_path: str) -> dict[str, Any] | None:
    """HEADS_FILE of a model folder or Hub repository ({"heads", "objective"}), or None for a one-head model."""
    path = Path(name_or_path)
    if path.is_dir():
        f = path / HEADS_FILE
        return json.loads(f.read_text()) if f.exists() else None
    from transformers.utils import cached_file

    found = cached_file(name_or_path, HEADS_FILE, _raise_exceptions_for_missing_entries=False,
                        _raise_exceptions_for_connection_errors=False)  # fmt: skip
    return json.loads(Path(found).read_text()) if found else None


def heads_of(path: str, objective: str | None, where: str) -> dict[str, Any] | None:
    """read_heads(path), checked; an objective for a one-head model (`where`) is a UsageError."""
    info = read_heads(path)
    if info is None:
        if objective is not None:
            raise UsageError(f"--objective: {where} has a single head (no {HEADS_FILE}): nothing to weigh")
        return None
    bad = [h for h in info.get("heads", ()) if h not in HEADS]
    if not info.get("heads") or bad or not isinstance(info.get("objective"), dict):
        raise ValueError(f"{where}/{HEADS_FILE}: expected heads among {', '.join(HEADS)} and an objective mapping")
    return info


def write_heads(model: PreTrainedModel, out: str | Path, heads: Sequence[str], objective: Mapping[str, float]) -> None:
    """Make a trained multi-head model's config say so (TRL trains it as num_labels=1) and record the heads and the
    default objective in HEADS_FILE next to the weights (call before save_pretrained; the folder must exist)."""
    model.num_labels = len(heads)
    model.config.num_labels = len(heads)  # a reload builds the K-row head
    model.config.id2label = dict(enumerate(heads))
    model.config.label2id = {h: i for i, h in enumerate(heads)}
    Path(out, HEADS_FILE).write_text(json.dumps({"heads": list(heads), "objective": dict(objective)}, indent=2))


def combine_rows(head: nn.Linear, weights: Sequence[float]) -> nn.Linear:
    """A one-output linear layer computing sum_k weights[k] * head's output k (a weighted sum of linear maps is one
    linear map: weight w @ W (1, H), bias w @ b)."""
    import torch
    from torch import nn

    w = torch.tensor(list(weights), dtype=torch.float32, device=head.weight.device)  # (K,)
    out = nn.Linear(head.in_features, 1, bias=head.bias is not None, device=head.weight.device,
                    dtype=head.weight.dtype)  # fmt: skip
    with torch.no_grad():
        out.weight.copy_((w @ head.weight.float()).unsqueeze(0))
        if head.bias is not None:
            out.bias.copy_((w @ head.bias.float()).reshape(1))
    return out


def fold_objective(model: PreTrainedModel, info: Mapping[str, Any], objective: str | None, where: str) -> None:
    """Turn a loaded multi-head model (in place) into the one-output reward model of `objective` (--objective text;
    None: the saved default). `where` names the model in errors. The weights used are in config.reward_objective."""
    heads = info["heads"]
    weights = parse_objective(objective, heads, f"{where}'s heads") if objective is not None else info["objective"]
    if model.score.out_features != len(heads):
        raise ValueError(f"{where}: {HEADS_FILE} names {len(heads)} heads, the score layer has "
                         f"{model.score.out_features} outputs")  # fmt: skip
    model.score = combine_rows(model.score, [weights.get(h, 0.0) for h in heads])
    model.num_labels = 1
    model.config.num_labels = 1
    model.config.reward_objective = weights  # evaluate, ppo and rloo report the objective they scored with


def objective_record(model: PreTrainedModel) -> dict[str, str]:
    """{'reward_objective': 'correct=2,overall=1'} for a folded multi-head reward model, {} for a one-head one."""
    weights = getattr(model.config, "reward_objective", None)
    return {"reward_objective": format_objective(weights)} if weights else {}


# -- labels -------------------------------------------------------------------------------------------------------
def label_matrix(ds: Dataset, heads: Sequence[str]) -> np.ndarray:
    """(N, K) labels of each pair for each head: +1 chosen better, -1 rejected better, 0 no label (ties, no pick,
    no column). `overall` is +1 on every pair: the chosen response is the annotators' choice."""
    import numpy as np

    from annotate.criteria import column  # here, not at the top: it loads numpy and pyarrow, which --help need not

    cols = []
    for h in heads:
        if h == "overall":
            cols.append(np.ones(len(ds)))
        elif column(h) in ds.column_names:
            v = np.array([np.nan if x is None else x for x in ds[column(h)]], dtype=float)
            cols.append(np.sign(np.nan_to_num(v)))
        else:
            cols.append(np.zeros(len(ds)))
    return np.stack(cols, axis=1) if cols else np.zeros((len(ds), 0))


def with_head_labels(ds: Dataset, heads: Sequence[str]) -> tuple[Dataset, dict[str, int]]:
    """The training set with its LABELS column and the number of labelled pairs per head. A head without a single
    labelled training pair is a UsageError: it could only ever output noise."""
    from annotate.criteria import column

    labels = label_matrix(ds, heads)
    counts = {h: int((labels[:, k] != 0).sum()) for k, h in enumerate(heads)}
    empty = [h for h in heads if counts[h] == 0]
    if empty:
        raise UsageError(
            f"--heads: no training pair carries a label for {', '.join(empty)} (export columns "
            f"{', '.join(column(h) for h in empty)}: votes with per-criterion picks, or for `correct` a pool with "
            "verifiers)"
        )
    return ds.add_column(LABELS, labels.tolist()), counts
