"""The length ruler: what length and style alone achieve on the pairs a reward model is judged on.

Three rules, each scored on the same held-out pairs as the model (ties count half):

- "pick the longer" and "pick the shorter": the response with more (fewer) characters wins;
- a style-only model: logistic regression on the differences of the two responses' style vectors (length, Markdown
  headers, list items, bold, hedging and confidence markers: annotate.audit_features, the audit's own definitions),
  fitted on the TRAINING pairs with the project's one solver (annotate.audit_stats.newton_logistic).

A reward model is flagged when its held-out accuracy is not clearly above the best rule: when the lower end of its
95% Wilson interval does not exceed that rule's accuracy. Then "this reward model may be measuring length" (or style):
its accuracy is within what counting characters or Markdown would give, whatever it learnt (Singhal et al. 2023,
arXiv 2310.03716, found length alone reproduces most of a reward model's gains).

Pure numpy on texts: no model, so the reward run, the model card, the pipeline report and the audit (on the votes)
can all show the same rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from annotate.audit_features import STYLE_FEATURES, style_differences
from annotate.audit_stats import newton_logistic, wilson

RULE_NAMES = {"longer": '"pick the longer"', "shorter": '"pick the shorter"', "style": "a style-only model"}
MEASURING = {"longer": "length", "shorter": "length", "style": "style (length and formatting)"}


def pair_accuracy(margins: np.ndarray) -> float:
    """Share of pairs a rule gets right from its margins (chosen minus rejected): > 0 right, 0 a tie (half)."""
    m = np.asarray(margins, dtype=float)
    return float(((m > 0) + 0.5 * (m == 0)).mean()) if len(m) else math.nan


@dataclass(frozen=True)
class StyleModel:
    """P(first response preferred) = sigmoid(weights . (s(first) - s(second)) / scale), s = style_vectors.

    No intercept: swapping the two responses flips the sign, as a preference between them must. `scale` is each
    difference's standard deviation on the training pairs (1 where constant), so the weights compare across features.
    """

    weights: np.ndarray  # (K,) one per STYLE_FEATURES, on the standardised differences
    scale: np.ndarray  # (K,)
    pairs: int  # training pairs it was fitted on

    def standardised(self, chosen: list[str], rejected: list[str]) -> np.ndarray:
        """(n, K) standardised style differences, chosen minus rejected: the bias expert's inputs under poe."""
        return style_differences(chosen, rejected) / self.scale

    def margins(self, chosen: list[str], rejected: list[str]) -> np.ndarray:
        """(n,) logit that the chosen response is preferred, by style alone."""
        return self.standardised(chosen, rejected) @ self.weights

    def coefficients(self) -> dict[str, float]:
        return {f: float(w) for f, w in zip(STYLE_FEATURES, self.weights)}


def fit_style_model(chosen: list[str], rejected: list[str], l2: float = 1.0) -> StyleModel:
    """The style-only model fitted on (training) pairs (see style_model_from_differences)."""
    return style_model_from_differences(style_differences(chosen, rejected), l2=l2)


def style_model_from_differences(d: np.ndarray, l2: float = 1.0) -> StyleModel:
    """The style-only model from style differences already computed (chosen minus rejected, one row per pair): the
    one fit, which the audit calls with the features it extracted once rather than running the regexes again.

    Every pair is oriented chosen-first, so the outcome is 1 throughout; without an intercept the likelihood is the
    same as with randomly oriented pairs. The small L2 penalty keeps the weights finite when style separates the
    pairs completely (a set where the chosen response is always the longer).
    """
    sd = d.std(axis=0) if len(d) else np.ones(len(STYLE_FEATURES))
    scale = np.where(sd > 0, sd, 1.0)
    x = d / scale
    weights, _ = newton_logistic(x, np.ones(len(x)), l2=l2) if len(x) else (np.zeros(len(scale)), True)
    return StyleModel(weights=np.asarray(weights, dtype=float), scale=scale, pairs=len(x))


def rule_accuracies(chosen: list[str], rejected: list[str], style: StyleModel | None = None) -> dict[str, float]:
    """{"longer", "shorter"[, "style"]: accuracy} on pairs (characters; ties count half)."""
    diff = np.array([len(c) - len(r) for c, r in zip(chosen, rejected, strict=True)], dtype=float)
    out = {"longer": pair_accuracy(diff), "shorter": pair_accuracy(-diff)}
    if style is not None:
        out["style"] = pair_accuracy(style.margins(chosen, rejected))
    return out


def verdict(model_accuracy: float, pairs: int, rules: dict[str, float]) -> dict[str, Any]:
    """Whether the model is clearly above the best rule: the lower end of its 95% Wilson interval must exceed it."""
    best = max(rules, key=lambda k: (rules[k], k == "longer"))  # on a tie name length, the plainer explanation
    lo, hi = wilson(model_accuracy * pairs, pairs)  # ties count half, so k may be fractional
    flagged = not lo > rules[best]
    acc = f"held-out accuracy {model_accuracy:.3f} (95% CI {lo:.3f}-{hi:.3f}, {pairs} pairs)"
    rule = f"{RULE_NAMES[best]} gets {rules[best]:.3f} on the same pairs"
    if flagged:
        text = f"this reward model may be measuring {MEASURING[best]}: {rule}, and its {acc} is not clearly above that"
    else:
        text = (f"clearly above length and style: its {acc} lies wholly above the best rule, {RULE_NAMES[best]}, "
                f"which gets {rules[best]:.3f} on the same pairs")  # fmt: skip
    return {"best": best, "ci95": [lo, hi], "flag": flagged, "text": text}


def length_ruler(
    style: StyleModel, chosen: list[str], rejected: list[str], model_accuracy: float | None = None
) -> dict[str, Any]:
    """The ruler's figures as flat `ruler_*` keys (eval.json, the model card, the pipeline report).

    `style` is fitted on the training pairs (fit_style_model); `chosen`/`rejected` are the held-out responses the
    model was scored on; with `model_accuracy` (on those pairs) the verdict is added."""
    rules = rule_accuracies(chosen, rejected, style)
    out: dict[str, Any] = {
        "ruler_pairs": len(chosen),
        "ruler_longer_accuracy": rules["longer"],
        "ruler_shorter_accuracy": rules["shorter"],
        "ruler_style_accuracy": rules["style"],
        "ruler_style_training_pairs": style.pairs,
        "ruler_style_weights": style.coefficients(),
    }
    if model_accuracy is not None and len(chosen):
        v = verdict(model_accuracy, len(chosen), rules)
        out |= {"ruler_best_rule": v["best"], "ruler_model_ci95": v["ci95"], "ruler_flag": v["flag"],
                "ruler_verdict": v["text"]}  # fmt: skip
    return out
