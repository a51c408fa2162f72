"""Hub cards: the dataset card of a published store, and what every card is made of (front matter, tables).

A card is YAML metadata (huggingface_hub's CardData) plus an honest body. Every figure in it is read from what the
project wrote (the store and its audit here; a run directory for the model card, rlhf.cards); a section whose source
is missing says so instead of being left out silently.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa
    from huggingface_hub import CardData

    from annotate.audit_types import AuditResult
    from annotate.provenance import Provenance


def fmt(v: Any) -> str:
    """A card's table cell: floats to 4 significant digits, NaN, inf and None as n/a."""
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    return "n/a" if v is None else str(v)


def table(rows: dict[str, Any], head: tuple[str, str] = ("field", "value")) -> str:
    """A two-column Markdown table."""
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    return "\n".join(lines + [f"| {k} | {fmt(v)} |" for k, v in rows.items()])


def front_matter(card_data: CardData) -> str:
    return f"---\n{card_data.to_yaml()}\n---\n"


def size_category(n: int) -> str:
    """The Hub's size_categories bucket for n rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


# ---------------------------------------------------------------- dataset card


def _audit_section(audit: AuditResult | None, why_missing: str) -> str:
    """Agreement and bias figures from annotate.audit, or a plain statement that the audit was not run."""
    if audit is None:
        return f"The audit was not run: {why_missing}."
    rows = {
        "Krippendorff's alpha (all annotators)": audit.agreement.alpha.alpha,
        "mean Cohen's kappa (annotator pairs)": audit.agreement.mean_kappa,
        "share of decisive votes for the left response": audit.position.overall.rate,
        "share of decisive votes for the longer response": audit.length.p_longer.overall.rate,
        "annotators flagged as random clickers": len(audit.flags.random_clickers),
    }
    if audit.reliability is not None:  # None when read from an audit.json of schema version 1 or 2
        rows["annotators flagged unreliable (Dawid-Skene)"] = len(audit.reliability.unreliable)
    r = audit.ruler  # None when read from an audit.json of schema version 1
    if r is not None and r.votes:
        rows |= {
            'votes predicted by "pick the longer"': r.longer.accuracy,
            'votes predicted by "pick the shorter"': r.shorter.accuracy,
            f"votes predicted by a style-only model ({r.folds}-fold cross-validated)": r.style_cv.accuracy,
        }
    note = ("50% means no position or length preference; alpha 1 is full agreement, 0 is chance. A reward model "
            "trained on these votes must beat the best \"votes predicted by\" figure to show more than length "
            "and style.")  # fmt: skip
    return (
        table(rows, ("figure (annotate.audit)", "value")) + f"\n\n{note}" + _reliability_section(audit)
        + _judge_section(audit) + _verified_section(audit)
    )  # fmt: skip


def _md_table(rows: list[dict[str, str]]) -> str:
    """Rows of text as a Markdown table ('|' in a cell, e.g. in an annotator id, escaped)."""

    def line(cells: Any) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(rows[0]), "|" + "---|" * len(rows[0])] + [line(r.values()) for r in rows])


def _reliability_section(audit: AuditResult) -> str:
    """Annotator reliability under the Dawid-Skene model (annotate.audit_reliability), when the audit has it."""
    r = audit.reliability
    if r is None or not r.votes:
        return ""
    from annotate.audit_reliability import reliability_findings, reliability_rows

    bins = ", ".join(f"{k}: {n}" for k, n in r.confidence.items())
    return (
        "\n\n### Annotator reliability (Dawid-Skene)\n\n"
        + " ".join(reliability_findings(r))
        + "\n\n"
        + _md_table(reliability_rows(r))
        + f"\n\nReliability: the share of an annotator's decisive votes (honeypots left out) that match the better "
        f"response as a Dawid-Skene latent-truth model infers it from all votes (Wilson 95% CI); 'unreliable': CI "
        f"wholly below {r.threshold:.0%}. Pairs by the model's probability of the likelier response: {bins}. The "
        "`preferences` export carries the per-pair probability when aggregated with it."
    )


def _judge_section(audit: AuditResult) -> str:
    """The judge bias card (annotate.audit_judge), only when AI judges voted."""
    card = audit.judges
    if card is None:
        return ""
    from annotate.audit_judge import JUDGE_NOTE, card_rows, judge_findings

    return (
        "\n\n### Judge bias card\n\n"
        + " ".join(judge_findings(card))
        + "\n\n"
        + _md_table(card_rows(card))
        + f"\n\n{JUDGE_NOTE} {card.rule}"
    )


def _verified_section(audit: AuditResult) -> str:
    """Preferred vs verified (annotate.audit_correct), only where the votes touch checkable prompts."""
    p = audit.preferred_vs_verified
    if p is None:
        return ""
    from annotate.audit_correct import annotator_rows, split_rows, verified_findings

    return (
        "\n\n### Preferred vs verified (checkable prompts)\n\n"
        + " ".join(verified_findings(p))
        + "\n\n"
        + _md_table(split_rows(p))
        + "\n\nPer annotator (share of votes where the wrong answer won; 95% CI, votes):\n\n"
        + _md_table(annotator_rows(p))
        + f"\n\n'Longer' compares the wrong answer with the right one ({p.length_unit}); 'hedged' means more "
        "hedging than confidence markers per 100 words (annotate.audit_features), 'confident' otherwise."
    )


def _annotators_section(annotators: dict[str, tuple[str, int]], note: str) -> str:
    rows = [{"annotator": name, "origin": origin, "votes": str(n)} for name, (origin, n) in annotators.items()]
    return f"{note}\n\n{_md_table(rows)}"


def _provenance_section(provenance: Provenance, licence: tuple[str | None, str]) -> str:
    """Where the judgments came from (annotate.provenance), per origin, and the release's licence with its reason."""
    from annotate.provenance import UNKNOWN_LICENSE

    name, why = licence
    said = f"`{name}`: {why}" if name else f"**{UNKNOWN_LICENSE}**: {why}; a push without `--license` is refused"
    return f"{_md_table(provenance.rows())}\n\nLicence of this release: {said}."


def _schema_section(schemas: dict[str, pa.Schema]) -> str:
    return "\n\n".join(
        f"`{cfg}`:\n\n| column | type |\n|---|---|\n" + "\n".join(f"| {f.name} | `{f.type}` |" for f in schema)
        for cfg, schema in schemas.items()
    )


def dataset_card(
    card_data: CardData,
    *,
    repo_id: str,
    counts: dict[str, Any],
    provenance: Provenance,
    licence: tuple[str | None, str],
    annotators: dict[str, tuple[str, int]],
    pseudonymised: bool,
    schemas: dict[str, pa.Schema],
    audit: AuditResult | None,
    audit_missing: str,
    guidelines: str | None,
) -> str:
    """README.md for a published comparison store. `licence`: (Hub licence id or None when unknown, why);
    `annotators`: published name -> (origin, standing votes)."""
    guide = guidelines.strip() if guidelines else "No annotation guidelines were given when this dataset was pushed."
    return (
        front_matter(card_data)
        + f"""
# {repo_id}

Pairwise judgments of model responses: {provenance.summary()}.

- `comparisons`: one row per standing vote (retracted votes and their retractions removed).
- `preferences`: the votes aggregated per pair into TRL's conversational preference format
  (`prompt`, `chosen`, `rejected`, `margin`, ...), ready for `DPOTrainer` / `RewardTrainer`.

```python
from datasets import load_dataset
prefs = load_dataset("{repo_id}", "preferences", split="train")
```

## Where the judgments come from

{_provenance_section(provenance, licence)}

## Counts

{table(counts, ("count", "value"))}

## Annotators

{_annotators_section(annotators, provenance.annotator_note(pseudonymised))}

## Agreement and bias

{_audit_section(audit, audit_missing)}

## Schema

{_schema_section(schemas)}

## Annotation guidelines

{guide}
"""
    )
