"""Audit a store's judgments before training on them: agreement, annotator quality, position and length bias,
preferred-vs-correct, a Bradley-Terry ranking of the candidate sources, the length ruler on the votes (how well
"pick the longer", "pick the shorter" and a style-only model predict what annotators chose), annotator reliability
under a latent-truth model (annotate.audit_reliability), on prompts with a verifier preferred vs verified (how often
the response the verifier rejects was preferred, annotate.audit_correct) and, when AI judges voted (annotator
"judge:<model>"), the judge bias card (annotate.audit_judge).

Everything here is a pure function of the comparisons (the store's standing votes, annotate.store.standing_mask),
returned as a typed `annotate.audit_types.AuditResult`, so the CLI (annotate.audit_cli), the HTML/JSON report
and the app's Dashboard tab (annotate.audit_dashboard) and the dataset card (annotate.cards) all show the same numbers.
Module layers: audit_types <- audit_stats/features <- audit_agreement/bias/correct/rank/ruler/reliability/judge <-
audit <- audit_report <- audit_dashboard, audit_cli.

Conventions:
- a *pair* is prompt_id + the unordered pair of response ids, so a pair shown with sides swapped is the same
  item; a vote's *label* is which response id won ("lo"/"hi" = the lexicographically smaller/larger id), "tie"
  or "both_bad" (skips carry no judgment and are left out of agreement);
- the first vote of an annotator on a pair counts for agreement; later ones are the audit repeats (flip rate);
- honeypots (a response against itself: response_a_id == response_b_id or identical text) have no content
  difference, so they feed only the position-bias figures and the honeypot tie rate;
- imported votes (session "import:...") have no real left/right placement and are left out of position bias.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from annotate.audit_agreement import agreement, annotator_quality
from annotate.audit_bias import length_bias, position_bias, preferred_vs_correct
from annotate.audit_correct import Verifiers, preferred_vs_verified, verdicts
from annotate.audit_features import (
    CONFIDENCE_MARKERS,
    FEATURES,
    HEDGE_MARKERS,
    _style_from_features,
    pair_features,
)
from annotate.audit_judge import judge_card
from annotate.audit_rank import bt_ranking
from annotate.audit_reliability import RELIABILITY_THRESHOLD, annotator_reliability
from annotate.audit_ruler import pair_accuracy, style_model_from_differences
from annotate.audit_stats import wilson
from annotate.audit_types import (
    AnnotatorQuality,
    AuditResult,
    BiasProfile,
    Definitions,
    Flags,
    LengthBias,
    PositionBias,
    RuleScore,
    Settings,
    Summary,
    VoteRuler,
)
from annotate.pool import GoldMap, gold_pairs
from annotate.store import standing_mask

RANDOM_CLICKER_RULE = (
    "An annotator is flagged as a random clicker when (1) at least {min_n} of their votes can be checked against "
    "the majority of the other annotators on the same pair (or, failing that, against gold pairs), (2) their "
    "agreement with that majority (or their gold accuracy) is not significantly above chance (one-sided exact "
    "binomial test, p >= {alpha_chance}; chance = the agreement expected if their labels were independent of the "
    "item, given their own label frequencies), and (3) their picks are near-uniform over position and length: "
    "neither the share of left wins nor the share of longer-response wins differs from 50% (two-sided binomial, "
    "p >= {alpha_bias}). Annotators failing only (3) have a systematic habit instead and are flagged for it "
    "('position_bias', 'length_bias')."
)


gold_from_pool = gold_pairs  # the one definition lives with the pool


def _effective(data: pa.Table | pd.DataFrame) -> pd.DataFrame:
    """Standing votes as pandas, through the store's one retraction filter."""
    if isinstance(data, pa.Table):
        # The prompt (a list of message structs) is the costliest column to convert and the audit never reads it.
        data = data.select([c for c in data.column_names if c not in ("prompt", "rationale")])
        return data.filter(standing_mask(data)).to_pandas() if "retracts" in data.column_names else data.to_pandas()
    if "retracts" not in data.columns:
        return data.reset_index(drop=True)
    ids = pa.table({"comparison_id": pa.array(data["comparison_id"].astype(str), pa.string()),
                    "retracts": pa.array(data["retracts"], pa.string(), from_pandas=True)})  # fmt: skip
    keep = standing_mask(ids).to_numpy(zero_copy_only=False)
    return data[keep].reset_index(drop=True)


def _criterion(value: Any, name: str) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    items = value.items() if isinstance(value, dict) else value  # Arrow maps come back as (key, value) tuples
    for k, v in items:
        if k == name:
            return v
    return None


def prepare_votes(
    data: pa.Table | pd.DataFrame, gold: GoldMap | None = None, verifiers: Verifiers | None = None
) -> pd.DataFrame:
    """One row per standing vote with everything the audit needs, side-normalised (see module docstring)."""
    df = _effective(data)
    a_id, b_id = df["response_a_id"].astype(str), df["response_b_id"].astype(str)
    swap = a_id > b_id
    lo, hi = a_id.where(~swap, b_id), b_id.where(~swap, a_id)
    choice = df["choice"].astype(str)
    v = pd.DataFrame(
        {
            "annotator": df["annotator"].astype(str),
            "prompt_id": df["prompt_id"].astype(str),
            "a_id": a_id,
            "b_id": b_id,
            "lo": lo,
            "hi": hi,
            "source_a": df["source_a"].fillna("").astype(str),
            "source_b": df["source_b"].fillna("").astype(str),
            "left": df["left"].astype(str),
            "choice": choice,
            "decision_ms": pd.to_numeric(df["decision_ms"], errors="coerce"),
            "created_at": df["created_at"],
        }
    )
    v["key"] = pd.factorize(v["prompt_id"] + "\x1f" + lo + "\x1f" + hi)[0]
    v["honeypot"] = (a_id == b_id) | (df["response_a"].fillna("") == df["response_b"].fillna(""))
    v["decisive"] = choice.isin(["a", "b"])
    a_won = choice == "a"
    v["winner_id"] = np.where(v["decisive"], np.where(a_won, a_id, b_id), None)
    a_is_lo = ~swap
    label = np.full(len(v), -1)
    label[(a_won & a_is_lo) | ((choice == "b") & ~a_is_lo)] = 0
    label[(a_won & ~a_is_lo) | ((choice == "b") & a_is_lo)] = 1
    label[choice == "tie"] = 2
    label[choice == "both_bad"] = 3
    v["label"] = label
    v["a_won"] = np.where(v["decisive"], a_won.astype(float), np.nan)
    v["left_won"] = np.where(v["decisive"], (choice == v["left"]).astype(float), np.nan)
    v["left_id"] = np.where(v["left"] == "a", a_id, b_id)
    # Imported judgments (annotate.importers marks their session "import:...") were never shown side by side.
    session = df["session"].fillna("").astype(str) if "session" in df else pd.Series("", index=df.index)
    v["placed"] = ~session.str.startswith("import:").to_numpy()
    fa, fb = pair_features(df)
    for f in FEATURES:
        v[f"a_{f}"], v[f"b_{f}"] = fa[f].to_numpy(), fb[f].to_numpy()
    v["correct_pick"] = [_criterion(c, "correct") for c in df["criteria"]] if "criteria" in df else None
    v["gold_winner"] = _gold_winners(v, gold or {})
    # Each side's verdict under its prompt's verifier (1 pass, 0 fail, NaN unchecked): preferred vs verified.
    v["a_pass"], v["b_pass"] = verdicts(v["prompt_id"], df["response_a"], df["response_b"], verifiers or {})
    v = v.sort_values("created_at", kind="stable")
    v["order"] = v.groupby(["annotator", "key"]).cumcount()
    return v.sort_index()


def _gold_winners(v: pd.DataFrame, gold: GoldMap) -> list[str | None]:
    if not gold:
        return [None] * len(v)
    return [gold.get(k) for k in zip(v["prompt_id"], v["lo"], v["hi"])]


def run_audit(
    data: pa.Table | pd.DataFrame,
    gold: GoldMap | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    length_unit: str = "chars",
    min_n: int = 20,
    alpha_chance: float = 0.05,
    alpha_bias: float = 0.01,
    ruler_folds: int = 5,
    verifiers: Verifiers | None = None,
    reliability_threshold: float = RELIABILITY_THRESHOLD,
) -> AuditResult:
    """The full audit (NaN where a figure is undefined; `AuditResult.to_dict()` is its JSON form). `verifiers`
    (prompt_id -> spec, annotate.pool.pool_verifiers) adds preferred vs verified where votes touch those prompts;
    an annotator whose reliability CI lies wholly below `reliability_threshold` is called unreliable."""
    if length_unit not in ("chars", "words"):
        raise ValueError(f"length_unit must be 'chars' or 'words', got {length_unit!r}")
    if ruler_folds < 2:
        raise ValueError(f"ruler_folds must be at least 2, got {ruler_folds}")
    v = prepare_votes(data, gold, verifiers)
    settings = Settings(n_boot=n_boot, seed=seed, length_unit=length_unit, min_n=min_n, alpha_chance=alpha_chance,
                        alpha_bias=alpha_bias, ruler_folds=ruler_folds)  # fmt: skip
    rule = RANDOM_CLICKER_RULE.format(min_n=min_n, alpha_chance=alpha_chance, alpha_bias=alpha_bias)
    position, length = position_bias(v), length_bias(v, unit=length_unit, min_n=min_n)
    annotators, flags = flag_annotators(annotator_quality(v), position, length, rule, min_n=min_n,
                                        alpha_chance=alpha_chance, alpha_bias=alpha_bias)  # fmt: skip
    return AuditResult(
        summary=_summary(v),
        settings=settings,
        agreement=agreement(v, n_boot=n_boot, seed=seed),
        annotators=annotators,
        position=position,
        length=length,
        preferred_vs_correct=preferred_vs_correct(v),
        ranking=bt_ranking(v, n_boot=n_boot, seed=seed),
        definitions=Definitions(
            hedge_markers=HEDGE_MARKERS, confidence_markers=CONFIDENCE_MARKERS, random_clicker_rule=rule
        ),
        flags=flags,
        ruler=vote_ruler(v, folds=ruler_folds, seed=seed),
        preferred_vs_verified=preferred_vs_verified(v, unit=length_unit),
        reliability=annotator_reliability(v, threshold=reliability_threshold),
        judges=judge_card(v, lambda g: bias_profile(g, unit=length_unit, min_n=min_n, folds=ruler_folds, seed=seed)),
    )


def bias_profile(v: pd.DataFrame, unit: str = "chars", min_n: int = 20, folds: int = 5, seed: int = 0) -> BiasProfile:
    """A group's habits by the audit's own measures, on its votes alone (the judge bias card's rows)."""
    position, length = position_bias(v), length_bias(v, unit=unit, min_n=min_n)
    return BiasProfile(
        votes=int(len(v)), left=position.overall, flips=position.flips.overall, longer=length.p_longer.overall,
        regression=length.regression.overall, mean_length=length.mean_length, ruler=vote_ruler(v, folds, seed),
    )  # fmt: skip


# -- the length ruler on the votes ------------------------------------------------------------------------------
def _rule_score(margins: np.ndarray) -> RuleScore:
    acc = pair_accuracy(margins)
    return RuleScore(accuracy=acc, ci=wilson(acc * len(margins), len(margins)))  # ties count half: k may be fractional


def _fold_of(prompts: np.ndarray, folds: int, seed: int) -> tuple[np.ndarray, int]:
    """Each vote's fold, whole prompts to a fold (a prompt's votes share texts: splitting them would leak), and the
    number of folds (fewer when there are fewer prompts)."""
    codes, uniques = pd.factorize(prompts)
    k = min(folds, len(uniques))
    order = np.random.default_rng(seed).permutation(len(uniques))
    fold_of_prompt = np.empty(len(uniques), dtype=int)
    fold_of_prompt[order] = np.arange(len(uniques)) % k if k else 0
    return fold_of_prompt[codes], k


def vote_ruler(v: pd.DataFrame, folds: int = 5, seed: int = 0) -> VoteRuler:
    """The length ruler's rules on the decisive, non-honeypot votes of prepare_votes (see VoteRuler)."""
    m = (v["decisive"] & ~v["honeypot"]).to_numpy()
    a_won = (v["choice"] == "a").to_numpy()[m]
    fa = v.loc[m, [f"a_{f}" for f in FEATURES]].to_numpy(dtype=float)
    fb = v.loc[m, [f"b_{f}" for f in FEATURES]].to_numpy(dtype=float)
    # Oriented chosen-first, as the ruler scores held-out pairs: a positive margin means the rule got the vote right.
    sign = np.where(a_won, 1.0, -1.0)
    d = sign[:, None] * (_style_from_features(fa) - _style_from_features(fb))
    chars = sign * (fa[:, FEATURES.index("chars")] - fb[:, FEATURES.index("chars")])
    style = style_model_from_differences(d)
    fold, k = _fold_of(v.loc[m, "prompt_id"].to_numpy(), folds, seed)
    cv = np.full(len(d), np.nan)
    if k >= 2:
        for f in range(k):
            held = fold == f
            fit = style_model_from_differences(d[~held])
            cv[held] = d[held] / fit.scale @ fit.weights
    longer, shorter = _rule_score(chars), _rule_score(-chars)
    in_sample = _rule_score(d / style.scale @ style.weights)
    style_cv = _rule_score(cv) if k >= 2 else RuleScore(accuracy=np.nan, ci=(np.nan, np.nan))
    rules = {"longer": longer.accuracy, "shorter": shorter.accuracy, "style": style_cv.accuracy}
    scored = {name: acc for name, acc in rules.items() if np.isfinite(acc)}
    # On a tie name length, the plainer explanation (as audit_ruler.verdict does).
    best = max(scored, key=lambda r: (scored[r], r != "style", r == "longer")) if scored else ""
    return VoteRuler(
        votes=int(m.sum()),
        prompts=int(v.loc[m, "prompt_id"].nunique()),
        longer=longer,
        shorter=shorter,
        style_in_sample=in_sample,
        style_cv=style_cv,
        folds=k if k >= 2 else 0,
        style_weights=style.coefficients() if len(d) else {},
        best=best,
    )


def _summary(v: pd.DataFrame) -> Summary:
    return Summary(
        votes=int(len(v)),
        annotators=int(v["annotator"].nunique()),
        prompts=int(v["prompt_id"].nunique()),
        pairs=int(v.loc[~v["honeypot"], "key"].nunique()),
        choices={str(k): int(n) for k, n in v["choice"].value_counts().sort_index().items()},
        honeypot_votes=int(v["honeypot"].sum()),
        repeat_votes=int(((v["order"] > 0) & ~v["honeypot"]).sum()),
        gold_votes=int(v["gold_winner"].notna().sum()),
    )


def flag_annotators(
    annotators: dict[str, AnnotatorQuality],
    position: PositionBias,
    length: LengthBias,
    rule: str,
    *,
    min_n: int = 20,
    alpha_chance: float = 0.05,
    alpha_bias: float = 0.01,
) -> tuple[dict[str, AnnotatorQuality], Flags]:
    """Apply RANDOM_CLICKER_RULE and the habit flags: the annotators with their `flags` set, and the summary."""
    out: dict[str, AnnotatorQuality] = {}
    for name, ann in annotators.items():
        flags = []
        biased = False
        for flag, stat in (("position_bias", position.per_annotator.get(name)),
                           ("length_bias", length.p_longer.per_annotator.get(name))):  # fmt: skip
            if stat is not None and stat.n >= min_n and stat.p_value < alpha_bias:
                flags.append(flag)
                biased = True
        evidence = ann.majority if ann.majority.n >= min_n else ann.gold
        if evidence.n >= min_n and evidence.p_value >= alpha_chance and not biased:
            flags.insert(0, "random_clicker")
        out[name] = dataclasses.replace(ann, flags=tuple(flags))
    per = {name: a.flags for name, a in out.items()}
    clickers = tuple(sorted(n for n, f in per.items() if "random_clicker" in f))
    return out, Flags(per_annotator=per, random_clickers=clickers, rule=rule)
