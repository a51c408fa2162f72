"""The app's Dashboard as data: the audit's findings, one row per annotator and the audit they come from, and its
figures. annotate.session.dashboard_view turns these into HTML; annotate.ui shows them. Every number is run_audit's
(annotate.audit), read the way the report reads it (annotate.audit_report)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from annotate.audit import run_audit
from annotate.audit_correct import Verifiers
from annotate.audit_report import findings, make_figures
from annotate.audit_types import AuditResult, Record
from annotate.pool import GoldMap


@dataclass(frozen=True, kw_only=True)
class AnnotatorRow(Record):
    """One line of the Dashboard's annotator table."""

    annotator: str
    votes: int
    gold_accuracy: float
    majority_agreement: float
    median_decision_s: float
    left_share: float
    longer_share: float
    flags: str
    reliability: float = math.nan  # the Dawid-Skene fit's (NaN without decisive votes)


@dataclass(frozen=True, kw_only=True)
class DashboardSummary(Record):
    """What the app's Dashboard shows: findings, one row per annotator, and the audit they come from."""

    audit: AuditResult
    findings: tuple[str, ...]
    annotators: tuple[AnnotatorRow, ...]


def dashboard_summary(
    table: Any, gold: GoldMap | None = None, n_boot: int = 200, verifiers: Verifiers | None = None
) -> DashboardSummary:
    """What the app's Dashboard tab shows: findings, one row per annotator, and the audit they come from (for
    `dashboard_figures`). `table`, `gold` and `verifiers` are what run_audit takes. Fewer bootstrap draws than the
    CLI so that it refreshes quickly."""
    audit = run_audit(table, gold, n_boot=n_boot, verifiers=verifiers)
    nan = math.nan
    rel = audit.reliability
    scores = rel.annotators if rel is not None else {}
    rows = []
    for name, ann in audit.annotators.items():
        pos, lng = audit.position.per_annotator.get(name), audit.length.p_longer.per_annotator.get(name)
        # The reliability section's flag joins the habit flags in the table's one flags column.
        flags = ann.flags + (("unreliable",) if rel is not None and name in rel.unreliable else ())
        rows.append(AnnotatorRow(
            annotator=name, votes=ann.votes, gold_accuracy=ann.gold.rate, majority_agreement=ann.majority.rate,
            median_decision_s=ann.decision_ms.median / 1000, left_share=pos.rate if pos else nan,
            longer_share=lng.rate if lng else nan, flags=", ".join(flags),
            reliability=scores[name].reliability if name in scores else nan,
        ))  # fmt: skip
    return DashboardSummary(audit=audit, findings=tuple(findings(audit)), annotators=tuple(rows))


def dashboard_figures(summary_or_audit: DashboardSummary | AuditResult) -> dict[str, Any]:
    """Matplotlib figures (name -> Figure) for `gr.Plot`s, from `dashboard_summary(...)` or `run_audit(...)`."""
    audit = summary_or_audit.audit if isinstance(summary_or_audit, DashboardSummary) else summary_or_audit
    return make_figures(audit)
