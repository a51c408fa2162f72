"""The audit's result as typed, frozen dataclasses, and its versioned JSON form.

`annotate.audit.run_audit` returns an `AuditResult`; the report (annotate.audit_report), the app's Dashboard
(annotate.session) and the dataset card (annotate.cards) read its fields. A figure that is undefined (no data) is
NaN in the dataclasses and null in JSON.

JSON form (what `python -m annotate audit --json` writes): `AuditResult.to_dict()` is plain JSON, one object per
dataclass with the field names below as keys (tuples become lists, NaN/inf null) plus "schema_version" at the
top; `AuditResult.from_dict()` reads it back, including files written before the version field existed (they
are version 1 without the key). Schema versions:

- 1: the first documented form. "store" ({store, version, rows}) is present when the CLI read a store version.
- 2: adds "ruler" (VoteRuler: how well length and style alone predict the votes) and settings.ruler_folds. Every
  version-2 file written by run_audit has it; it is null only in an audit read from a version-1 file and written
  again. Version-1 files still read (ruler None, ruler_folds its default).
  Optional within version 2: "preferred_vs_verified" (PreferredVsVerified), present only when some decisive vote
  was between a response that passes its prompt's verifier and one that fails it; absent otherwise, so no reader
  may rely on it and it needed no new version.
- 3: adds "reliability" (Reliability: the Dawid-Skene latent-truth model's per-annotator reliability with CIs and
  what it makes of the pairs, annotate.audit_reliability). Every version-3 file written by run_audit has it;
  version-1 and -2 files still read (reliability None).
  Optional within version 3: "judges" (JudgeCard, annotate.audit_judge), present only when some annotator is an AI
  judge (id "judge:<model>"); absent otherwise.

Raise SCHEMA_VERSION when a key is renamed, removed or changes meaning, or when a section is added that readers
of the new version may rely on (as "ruler"); an optional key with a default does not need it. from_dict reads
every version up to SCHEMA_VERSION.
Conventions for the figures (pairs, labels, honeypots, placements) are in annotate.audit's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from annotate.jsonutil import Record, from_jsonable, to_jsonable  # the project's one JSON cleaner and its inverse

SCHEMA_VERSION = 3

Interval = tuple[float, float]  # a 95% interval (lo, hi); (nan, nan) when undefined


_frozen = dataclass(frozen=True, kw_only=True)


# -- building blocks ------------------------------------------------------------------------------------------------
@_frozen
class Proportion(Record):
    """k successes out of n: rate, Wilson 95% CI and an exact binomial test against `null`."""

    k: int
    n: int
    rate: float
    ci: Interval
    p_value: float
    null: float


@_frozen
class Breakdown(Record):
    """A proportion over all votes and per annotator."""

    overall: Proportion
    per_annotator: dict[str, Proportion]


@_frozen
class Coefficient(Record):
    """Wald summary of one logistic-regression term (log-odds scale)."""

    coef: float
    se: float
    ci: Interval
    p_value: float
    odds_ratio: float


@_frozen
class LogitFit(Record):
    n: int
    coefficients: dict[str, Coefficient]


# -- sections -------------------------------------------------------------------------------------------------------
@_frozen
class Summary(Record):
    votes: int
    annotators: int
    prompts: int
    pairs: int
    choices: dict[str, int]
    honeypot_votes: int
    repeat_votes: int
    gold_votes: int


@_frozen
class Settings(Record):
    n_boot: int
    seed: int
    length_unit: str
    min_n: int
    alpha_chance: float
    alpha_bias: float
    ruler_folds: int = 5  # cross-validation folds of the vote ruler's style-only model (schema 2)


@_frozen
class KrippendorffAlpha(Record):
    """Nominal alpha over units judged at least twice; `values` counts the pairable judgments."""

    alpha: float
    ci: Interval
    units: int
    values: int


@_frozen
class Kappa(Record):
    kappa: float
    ci: Interval
    n: int
    observed_agreement: float


@_frozen
class KappaPair(Record):
    annotators: tuple[str, str]
    kappa: float
    ci: Interval
    n: int
    observed_agreement: float


@_frozen
class Agreement(Record):
    alpha: KrippendorffAlpha
    kappa_pairs: tuple[KappaPair, ...]
    mean_kappa: float  # weighted by shared pairs
    min_shared: int


@_frozen
class Timing(Record):
    n: int
    median: float
    mean: float
    p10: float
    p90: float


@_frozen
class MajorityAgreement(Record):
    """Agreement with the leave-one-out majority of the other annotators, against chance (one-sided test)."""

    k: int
    n: int
    rate: float
    ci: Interval
    chance: float
    p_value: float


@_frozen
class HoneypotTies(Record):
    n: int
    tie_rate: float


@_frozen
class AnnotatorQuality(Record):
    votes: int
    choices: dict[str, int]
    decision_ms: Timing
    gold: Proportion  # one-sided: better than a coin on pairs with a known answer?
    majority: MajorityAgreement
    honeypot: HoneypotTies
    flags: tuple[str, ...] = ()


@_frozen
class PositionBias(Record):
    overall: Proportion  # share of decisive, placed votes won by the left response
    per_annotator: dict[str, Proportion]
    honeypots: Proportion
    flips: Breakdown  # winner changed on a repeat shown with the sides swapped


@_frozen
class LongerShare(Breakdown):
    equal_length_excluded: int


@_frozen
class Regression(Record):
    overall: LogitFit | None  # None below the minimum number of votes
    per_annotator: dict[str, LogitFit]


@_frozen
class MeanLength(Record):
    chosen: float
    rejected: float


@_frozen
class LengthBias(Record):
    unit: str  # "chars" or "words"
    p_longer: LongerShare
    regression: Regression
    sd: dict[str, float]  # the standard deviation each regressor was divided by
    mean_length: MeanLength


@_frozen
class PreferredVsCorrect(Breakdown):
    correct_ties: int


@_frozen
class WrongPicks(Record):
    """Of the decisive votes between a response that passes its prompt's verifier and one that fails it, the share
    won by the failing one (`overall`), and the same share within each split of annotate.audit_correct.SPLITS (the
    wrong response longer or not than the right one, confident or hedged); a split without votes has n = 0."""

    overall: Proportion
    splits: dict[str, Proportion]


@_frozen
class PreferredVsVerified(Record):
    """Preferred vs verified on checkable prompts (annotate.audit_correct): how often annotators preferred the
    response the verifier rejects, over all annotators and per annotator, with Wilson 95% CIs."""

    overall: WrongPicks
    per_annotator: dict[str, WrongPicks]
    prompts: int  # checkable prompts with at least one counted vote
    checkable_votes: int  # standing votes on prompts with a verifier, counted or not
    excluded: dict[str, int]  # checkable votes left out, by reason: both_pass, both_fail, not_decisive
    length_unit: str  # what "longer" was measured in (the audit's length unit)


@_frozen
class RankRow(Record):
    source: str
    score: float  # Elo-like scale, mean 1000
    ci: Interval
    comparisons: int
    rank: int


@_frozen
class Ranking(Record):
    sources: tuple[str, ...]
    votes: int
    plain: tuple[RankRow, ...]  # best first; empty with fewer than two sources
    style: tuple[RankRow, ...]
    style_coefficients: dict[str, Coefficient]
    style_boot: int = 0  # bootstrap draws of the style-controlled fit


@_frozen
class Definitions(Record):
    hedge_markers: tuple[str, ...]
    confidence_markers: tuple[str, ...]
    random_clicker_rule: str


@_frozen
class Flags(Record):
    per_annotator: dict[str, tuple[str, ...]]
    random_clickers: tuple[str, ...]
    rule: str


@_frozen
class RuleScore(Record):
    """A rule's accuracy on the votes (ties count half) and its 95% Wilson interval (votes taken as independent)."""

    accuracy: float
    ci: Interval


@_frozen
class VoteRuler(Record):
    """What length and style alone predict of the votes: the length ruler's rules (annotate.audit_ruler) scored on
    every decisive vote (repeats and imported votes included, honeypots left out), the chosen response against the
    rejected one, lengths in characters.

    The style-only model is fitted on the votes themselves, so its in-sample accuracy is optimistic; `style_cv`
    predicts each vote with a model fitted on the other prompts' votes (`folds`-fold by prompt; 0 folds and NaN
    with fewer than two prompts). `best` names the rule that predicts most ("longer", "shorter", or "style" by its
    cross-validated accuracy; "" without votes)."""

    votes: int
    prompts: int
    longer: RuleScore
    shorter: RuleScore
    style_in_sample: RuleScore
    style_cv: RuleScore
    folds: int
    style_weights: dict[str, float]  # the in-sample fit's weights, one per style feature on standardised differences
    best: str


@_frozen
class AnnotatorReliability(Record):
    """One annotator under the Dawid-Skene fit (annotate.reliability): P(a vote of theirs matches the latent
    truth) with its Wilson 95% CI, and their accuracy when the better response was shown on the left / right (NaN
    without placed votes; a gap between the two is a position habit)."""

    votes: int
    reliability: float
    ci: Interval
    expected_correct: float
    acc_better_left: float
    acc_better_right: float


@_frozen
class PairPosterior(Record):
    """One pair: its decisive votes for each response and the fit's P(lo is the better response)."""

    prompt_id: str
    lo_id: str
    hi_id: str
    votes_lo: int
    votes_hi: int
    p_lo: float


@_frozen
class Reliability(Record):
    """Annotator reliability from a latent-truth model over the decisive, non-honeypot votes
    (annotate.audit_reliability). `unreliable`: annotators whose CI lies wholly below `threshold`. Per pair,
    `confidence` counts pairs by the posterior of the likelier response ("0.9+", "0.7-0.9", "0.5-0.7");
    `overturned` counts pairs whose likelier response is not the plain majority's (majority ties left out),
    `examples` the most confident of them."""

    method: str  # "dawid-skene"
    votes: int
    pairs: int
    annotators: dict[str, AnnotatorReliability]
    threshold: float
    unreliable: tuple[str, ...]
    confidence: dict[str, int]
    overturned: int
    examples: tuple[PairPosterior, ...]
    iterations: int
    converged: bool


@_frozen
class BiasProfile(Record):
    """A group's habits, each by the audit's own measure on that group's votes alone (annotate.audit_judge): the
    share of left wins and the flip rate on swapped repeats (audit_bias.position_bias), the share of longer wins,
    the choice regressed on position, length, hedging and confidence, and mean lengths (audit_bias.length_bias),
    and what length and style alone predict of the votes (audit.vote_ruler)."""

    votes: int
    left: Proportion
    flips: Proportion
    longer: Proportion
    regression: LogitFit | None  # None below the audit's minimum number of votes
    mean_length: MeanLength
    ruler: VoteRuler


@_frozen
class JudgeBias(BiasProfile):
    """An AI judge's profile, plus how often its verdicts match the humans' majority on the same pairs."""

    agreement: Proportion
    flags: tuple[str, ...] = ()


@_frozen
class JudgeCard(Record):
    """The judge bias card: every annotator whose id starts with "judge:" next to the humans (all other annotators
    together), and the rule behind its flags."""

    judges: dict[str, JudgeBias]
    humans: BiasProfile
    flip_limit: float
    rule: str


@_frozen
class StoreRef(Record):
    """The sealed store version an audit read, so that it can be re-run on exactly those votes."""

    store: str
    version: int
    rows: int


@_frozen
class AuditResult(Record):
    """Everything `run_audit` measures; see the module docstring for the JSON form."""

    summary: Summary
    settings: Settings
    agreement: Agreement
    annotators: dict[str, AnnotatorQuality]
    position: PositionBias
    length: LengthBias
    preferred_vs_correct: PreferredVsCorrect
    ranking: Ranking
    definitions: Definitions
    flags: Flags
    ruler: VoteRuler | None = None  # None only when read from a version-1 file
    store: StoreRef | None = None
    preferred_vs_verified: PreferredVsVerified | None = None  # None without votes on checkable prompts
    reliability: Reliability | None = None  # None only when read from a version-1 or -2 file
    judges: JudgeCard | None = None  # None without AI judges among the annotators

    def to_dict(self) -> dict[str, Any]:
        out = {"schema_version": SCHEMA_VERSION, **to_jsonable(self)}
        # Absent rather than null: no store version, nothing checkable, no judge.
        for key in ("store", "preferred_vs_verified", "judges"):
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditResult:
        version = data.get("schema_version", 1)  # files written before the field existed are version 1
        if version not in range(1, SCHEMA_VERSION + 1):
            raise ValueError(
                f"audit JSON schema_version {version} is not supported (this code reads 1 to {SCHEMA_VERSION})"
            )
        try:
            # Sections a version lacks keep their dataclass defaults (version 1: no "ruler"; 1-2: no "reliability").
            return from_jsonable(cls, {k: v for k, v in data.items() if k != "schema_version"})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"not an audit JSON of schema version {version}: {e}") from e
