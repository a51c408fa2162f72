"""The audit as people read it: plain-language findings, matplotlib figures, a self-contained HTML page
(figures embedded as base64 PNG) and JSON with the same numbers; annotate.audit_dashboard builds the app's Dashboard
from them.

Every function reads the typed result of annotate.audit.run_audit (annotate.audit_types.AuditResult); a saved
audit.json goes through AuditResult.from_dict first. Nothing of annotate.audit's imports this module.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from annotate.audit_correct import verified_figure, verified_findings, verified_html
from annotate.audit_judge import judge_figure, judge_findings, judge_html
from annotate.audit_reliability import reliability_figure, reliability_findings, reliability_html
from annotate.audit_types import (
    AuditResult,
    Interval,
    MajorityAgreement,
    Proportion,
    Ranking,
    RankRow,
    RuleScore,
    VoteRuler,
)


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.0f}%"


def _ci_pct(ci: Interval) -> str:
    lo, hi = ci
    return "CI n/a" if not (math.isfinite(lo) and math.isfinite(hi)) else f"95% CI {100 * lo:.0f}-{100 * hi:.0f}%"


def _p(p: float) -> str:
    return "p n/a" if not math.isfinite(p) else ("p < 0.001" if p < 0.001 else f"p = {p:.3f}")


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _alpha_words(a: float) -> str:
    # Krippendorff (2004): >= 0.8 reliable, 0.667-0.8 tentative conclusions only, below that unreliable.
    if a >= 0.8:
        return "good agreement"
    if a >= 0.667:
        return "acceptable only for tentative conclusions (Krippendorff's threshold is 0.667-0.8)"
    if a > 0:
        return "low agreement (below Krippendorff's 0.667 threshold)"
    return "no better than chance"


def findings(audit: AuditResult) -> list[str]:
    """Plain-language sentences, most important first."""
    s, out = audit.summary, []
    if s.votes == 0:
        return ["The store holds no standing votes yet."]
    out.append(
        f"{_n(s.votes, 'standing vote')} from {_n(s.annotators, 'annotator')} on {_n(s.pairs, 'pair')} "
        f"({s.gold_votes} on gold pairs, {s.repeat_votes} repeats, {s.honeypot_votes} honeypots)."
    )
    al = audit.agreement.alpha
    if math.isfinite(al.alpha):
        lo, hi = al.ci
        ci = f"95% CI {lo:.2f} to {hi:.2f}" if math.isfinite(lo) and math.isfinite(hi) else "CI n/a"
        out.append(
            f"Krippendorff's alpha is {al.alpha:.2f} ({ci}) over {al.units} pairs "
            f"judged by two or more annotators: {_alpha_words(al.alpha)}."
        )
    else:
        out.append("No pair was judged by two annotators, so agreement cannot be measured (use --overlap 2).")
    out += _bias_findings(audit)
    rc = audit.flags.random_clickers
    for name in rc:
        m = audit.annotators[name].majority
        out.append(
            f"{name} looks like a random clicker: agreed with the other annotators' majority on "
            f"{_pct(m.rate)} of {m.n} pairs, where {_pct(m.chance)} is expected by chance."
        )
    if not rc:
        out.append("No annotator was flagged as a random clicker.")
    out += reliability_findings(audit.reliability)
    out += _habit_findings(audit)
    out += judge_findings(audit.judges)
    out += _ranking_findings(audit.ranking)
    return out


def _bias_findings(audit: AuditResult) -> list[str]:
    out = []
    pos = audit.position.overall
    if pos.n:
        verdict = "a position bias" if pos.p_value < 0.05 else "no detectable position bias"
        out.append(
            f"Annotators chose the left response {_pct(pos.rate)} of the time ({_ci_pct(pos.ci)}, "
            f"binomial {_p(pos.p_value)}): {verdict}."
        )
    else:
        out.append("No decisive vote has a recorded left/right placement (e.g. imported data): no position figures.")
    flips = audit.position.flips.overall
    if flips.n:
        out.append(
            f"On {flips.n} pairs shown again with the sides swapped, the chosen response changed "
            f"{_pct(flips.rate)} of the time ({_ci_pct(flips.ci)})."
        )
    pl, unit = audit.length.p_longer.overall, audit.length.unit
    if pl.n:
        out.append(
            f"Annotators chose the longer response {_pct(pl.rate)} of the time ({_ci_pct(pl.ci)}; "
            f"{pl.n} decisive votes with lengths differing in {unit}; binomial {_p(pl.p_value)})."
        )
    out += _regression_findings(audit)
    out += _ruler_findings(audit.ruler)
    pvc = audit.preferred_vs_correct.overall
    if pvc.n:
        out.append(
            f"Where annotators also marked the more correct response ({pvc.n} votes), their overall pick was the "
            f"other response {_pct(pvc.rate)} of the time ({_ci_pct(pvc.ci)})."
        )
    return out + verified_findings(audit.preferred_vs_verified)


def _regression_findings(audit: AuditResult) -> list[str]:
    reg, unit = audit.length.regression.overall, audit.length.unit
    if reg is None or "length" not in reg.coefficients:
        return []
    c, sd = reg.coefficients["length"], audit.length.sd["length"]
    lo, hi = (math.exp(x) for x in c.ci)
    out = [
        f"Each standard deviation of length difference ({sd:.0f} {unit}) multiplies the odds of being chosen "
        f"by {math.exp(c.coef):.2f} (95% CI {lo:.2f}-{hi:.2f}), holding position, hedging and confidence fixed."
    ]
    for name in ("hedges", "confidence"):
        c = reg.coefficients.get(name)
        if c is not None and c.p_value < 0.05:
            word = "more" if c.coef > 0 else "less"
            out.append(f"Responses with more {name} markers were chosen {word} often ({_p(c.p_value)}).")
    return out


# rule -> (what predicts, its verb, what a model matching it would be measuring)
RULER_WHAT = {
    "longer": ('length alone ("pick the longer")', "predicts", "length"),
    "shorter": ('length alone ("pick the shorter")', "predicts", "length"),
    "style": ("length and style alone (a style-only model, cross-validated by prompt)", "predict", "length and style"),
}


def ruler_best(ruler: VoteRuler) -> RuleScore | None:
    """The score of the rule that predicts the votes best (the style model's cross-validated one), if any."""
    return {"longer": ruler.longer, "shorter": ruler.shorter, "style": ruler.style_cv}.get(ruler.best)


def _ruler_findings(ruler: VoteRuler | None) -> list[str]:
    """How well length and style alone predict the votes: the headline, then every rule."""
    best = ruler_best(ruler) if ruler is not None else None
    if ruler is None or best is None:
        return []
    what, verb, measure = RULER_WHAT[ruler.best]
    if best.ci[0] > 0.5:
        head = (
            f"{what[0].upper() + what[1:]} {verb} {_pct(best.accuracy)} of votes ({_ci_pct(best.ci)}, "
            f"{ruler.votes} decisive votes): "
            f"a reward model trained on them can reach that accuracy by measuring {measure}, so its held-out "
            "accuracy must clear this (the length ruler in its report)."
        )
    else:
        head = (
            "Length and style alone do not predict the votes better than chance: the best rule, "
            f"{what}, gets {_pct(best.accuracy)} ({_ci_pct(best.ci)})."
        )
    if ruler.folds:
        cv = f"{_pct(ruler.style_cv.accuracy)} cross-validated ({ruler.folds}-fold by prompt)"
    else:
        cv = "not cross-validated (fewer than two prompts)"
    detail = (
        f'Length ruler on {ruler.votes} decisive votes (ties in length count half): "pick the longer" '
        f'{_pct(ruler.longer.accuracy)}, "pick the shorter" {_pct(ruler.shorter.accuracy)}, a style-only model '
        f"(length, Markdown, hedging, confidence) {_pct(ruler.style_in_sample.accuracy)} in sample, {cv}."
    )
    return [head, detail]


def _habit_findings(audit: AuditResult) -> list[str]:
    """One sentence per annotator flagged for a side or length habit."""
    out = []
    for name, flags in sorted(audit.flags.per_annotator.items()):
        if "position_bias" in flags:
            st = audit.position.per_annotator[name]
            out.append(f"{name} chose the left response {_pct(st.rate)} of the time ({_ci_pct(st.ci)}, "
                       f"{_p(st.p_value)}).")  # fmt: skip
        if "length_bias" in flags:
            st = audit.length.p_longer.per_annotator[name]
            out.append(f"{name} chose the longer response {_pct(st.rate)} of the time ({_ci_pct(st.ci)}, "
                       f"{_p(st.p_value)}).")  # fmt: skip
    return out


def _ranking_findings(rank: Ranking) -> list[str]:
    if not rank.plain:
        return ["Fewer than two candidate sources: no Bradley-Terry ranking."]

    def order(rows: tuple[RankRow, ...]) -> str:
        return " > ".join(f"{r.source} ({r.score:.0f})" for r in rows)

    return [
        f"Bradley-Terry ranking of sources: {order(rank.plain)}.",
        f"Controlling for length and Markdown formatting: {order(rank.style)}.",
    ]


# -- figures ---------------------------------------------------------------------------------------------------
def _subplots(figsize: tuple[float, float]):
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _errorbar(ax, stats: list[Proportion | MajorityAgreement], color: str, label: str | None = None,
              shift: float = 0.0) -> None:  # fmt: skip
    ys = [st.rate for st in stats]
    lo = [max(y - st.ci[0], 0) if math.isfinite(y) else 0 for y, st in zip(ys, stats)]
    hi = [max(st.ci[1] - y, 0) if math.isfinite(y) else 0 for y, st in zip(ys, stats)]
    xs = [i + shift for i in range(len(stats))]
    ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", color=color, capsize=4, label=label)


def _rate_figure(audit: AuditResult, per: dict[str, Proportion], overall: Proportion, title: str, ylabel: str,
                 null: float = 0.5):  # fmt: skip
    names = sorted(per)
    fig, ax = _subplots(figsize=(max(5, 0.7 * len(names) + 2), 3.6))
    flagged = set(audit.flags.random_clickers)
    _errorbar(ax, [per[n] for n in names], "tab:blue", "per annotator")
    _errorbar(ax, [overall], "black", "all annotators", shift=len(names))
    ax.axhline(null, color="grey", ls="--", lw=1, label=f"no bias ({null:.0%})")
    ax.set_xticks(range(len(names) + 1), [f"{n} *" if n in flagged else n for n in names] + ["ALL"], rotation=30)
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def _annotator_figure(audit: AuditResult):
    ann = audit.annotators
    names = sorted(ann)
    fig, ax = _subplots(figsize=(max(5, 0.7 * len(names) + 2), 3.6))
    _errorbar(ax, [ann[n].majority for n in names], "tab:blue", "agreement with majority", -0.12)
    _errorbar(ax, [ann[n].gold for n in names], "tab:orange", "gold accuracy", 0.12)
    ax.scatter(range(len(names)), [ann[n].majority.chance for n in names], marker="_", s=300,
               color="black", label="chance agreement", zorder=3)  # fmt: skip
    flagged = set(audit.flags.random_clickers)
    ax.set_xticks(range(len(names)), [f"{n} *" if n in flagged else n for n in names], rotation=30)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("share (95% CI)")
    ax.set_title("Annotator quality (* = flagged random clicker)")
    ax.legend(loc="lower left", fontsize=8)
    return fig


def _ranking_figure(rank: Ranking):
    fig, ax = _subplots(figsize=(6, max(2.5, 0.5 * len(rank.plain) + 1.5)))
    order = [r.source for r in rank.plain][::-1]
    kinds = ((rank.plain, "tab:blue", 0.15, "plain"),
             (rank.style, "tab:green", -0.15, "style-controlled (length, formatting)"))  # fmt: skip
    for rows, color, dy, label in kinds:
        by = {r.source: r for r in rows}
        xs = [by[s].score for s in order]
        err = [[max(x - by[s].ci[0], 0) for x, s in zip(xs, order)],
               [max(by[s].ci[1] - x, 0) for x, s in zip(xs, order)]]  # fmt: skip
        ax.errorbar(xs, [i + dy for i in range(len(order))], xerr=err, fmt="o", color=color, capsize=4, label=label)
    ax.set_yticks(range(len(order)), order)
    ax.axvline(1000, color="grey", lw=1, ls="--")
    ax.set_xlabel("Bradley-Terry score (Elo scale, mean 1000; 95% bootstrap CI)")
    ax.set_title("Ranking of candidate sources")
    ax.legend(fontsize=8)
    return fig


def empty_figures(audit: AuditResult) -> dict[str, str]:
    """Figures with nothing to show, and why (the HTML leaves them out; the Dashboard shows the reason)."""
    ann = audit.annotators.values()
    reasons = {
        "position": audit.position.overall.n == 0 and "no decisive vote with a recorded left/right side",
        "length": audit.length.p_longer.overall.n == 0 and "no decisive vote on responses of unequal length",
        "annotators": not any(a.majority.n or a.gold.n for a in ann)
        and "no pair judged by two annotators and no gold pair",
        "ranking": not audit.ranking.plain and "fewer than two candidate sources",
        "reliability": (audit.reliability is None and "not in this audit (an audit JSON of schema version 1 or 2)")
        or (audit.reliability is not None and not audit.reliability.votes and "no decisive vote to fit"),
    }
    return {name: why for name, why in reasons.items() if why}


def _placeholder(title: str, why: str):
    fig, ax = _subplots(figsize=(5, 1.6))
    ax.set_axis_off()
    ax.text(0.5, 0.5, f"{title}: {why}", ha="center", va="center", wrap=True)
    return fig


def make_figures(audit: AuditResult) -> dict[str, Any]:
    """name -> matplotlib Figure, always the keys position, length, annotators, ranking, reliability (a figure
    with nothing to show says why), "verified" only when the audit has preferred vs verified and "judges" only with
    AI judges. Built without pyplot, so nothing is kept alive by a global registry (the Dashboard redraws these on
    every refresh)."""
    pos, length = audit.position, audit.length
    builders = {
        "position": lambda: _rate_figure(audit, pos.per_annotator, pos.overall, "Position bias: share of left wins",
                                         "left chosen (95% CI)"),
        "length": lambda: _rate_figure(audit, length.p_longer.per_annotator, length.p_longer.overall,
                                       "Length bias: share of longer wins", f"longer ({length.unit}) chosen (95% CI)"),
        "annotators": lambda: _annotator_figure(audit),
        "ranking": lambda: _ranking_figure(audit.ranking),
        "reliability": lambda: reliability_figure(audit.reliability),
    }  # fmt: skip
    if audit.preferred_vs_verified is not None:
        builders["verified"] = lambda: verified_figure(audit.preferred_vs_verified)
    if audit.judges is not None:
        builders["judges"] = lambda: judge_figure(audit.judges)
    empty = empty_figures(audit)
    return {name: _placeholder(name, empty[name]) if name in empty else build() for name, build in builders.items()}


def _png_b64(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode()


# -- HTML and JSON ---------------------------------------------------------------------------------------------
CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}.flag{color:#b00;font-weight:bold}
li{margin:.3em 0}img{max-width:100%}code{background:#f3f3f3;padding:0 3px}"""


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _annotator_rows(audit: AuditResult) -> list[list[Any]]:
    none = Proportion(k=0, n=0, rate=math.nan, ci=(math.nan, math.nan), p_value=math.nan, null=0.5)
    rows = []
    for name, a in sorted(audit.annotators.items()):
        pos = audit.position.per_annotator.get(name, none)
        lng = audit.length.p_longer.per_annotator.get(name, none)
        rows.append([
            html.escape(name), a.votes, f"{_pct(a.gold.rate)} (n={a.gold.n})",
            f"{_pct(a.majority.rate)} vs {_pct(a.majority.chance)} (n={a.majority.n})",
            f"{_pct(pos.rate)} [{_ci_pct(pos.ci)}]", f"{_pct(lng.rate)} [{_ci_pct(lng.ci)}]",
            f"{a.decision_ms.median / 1000:.1f}", f"<span class=flag>{html.escape(', '.join(a.flags))}</span>",
        ])  # fmt: skip
    return rows


def _ruler_html(ruler: VoteRuler | None) -> str:
    """The length ruler on the votes: one row per rule, then the style model's weights."""
    if ruler is None:
        return "<p>Not in this audit (read from a version-1 audit JSON).</p>"
    if not ruler.votes:
        return "<p>No decisive vote to score.</p>"
    cv = f"{ruler.folds}-fold cross-validated by prompt" if ruler.folds else "cross-validated (fewer than 2 prompts)"
    rules = [
        ('"pick the longer"', ruler.longer),
        ('"pick the shorter"', ruler.shorter),
        ("a style-only model, in sample (optimistic)", ruler.style_in_sample),
        (f"a style-only model, {cv}", ruler.style_cv),
    ]
    rows = [[html.escape(name), _pct(sc.accuracy), _ci_pct(sc.ci)] for name, sc in rules]
    weights = ", ".join(f"{k} {w:+.2f}" for k, w in ruler.style_weights.items())
    return (
        f"<p>How well length and style alone predict the {ruler.votes} decisive votes on {ruler.prompts} prompts "
        "(honeypots left out; lengths in characters, ties count half): what a reward model trained on these votes "
        "must beat (annotate.audit_ruler).</p>"
        + _table(["rule", "votes predicted", "95% CI"], rows)
        + f"<p>Style-only model weights (per standard deviation of each difference): <code>{html.escape(weights)}"
        "</code></p>"
    )


def _rank_row(r: RankRow) -> list[Any]:
    return [r.rank, html.escape(r.source), f"{r.score:.0f}", f"{r.ci[0]:.0f} to {r.ci[1]:.0f}", r.comparisons]


def render_html(audit: AuditResult, title: str = "Preference data audit") -> str:
    """A self-contained HTML page: findings, figures (base64 PNG), tables and the definitions used."""
    empty = empty_figures(audit)
    figs = {name: _png_b64(fig) for name, fig in make_figures(audit).items() if name not in empty}
    items = "".join(f"<li>{html.escape(s)}</li>" for s in findings(audit))
    imgs = "".join(f'<p><img alt="{n}" src="data:image/png;base64,{b}"></p>' for n, b in figs.items())
    ann = _table(
        ["annotator", "votes", "gold accuracy", "agreement with majority vs chance", "left chosen", "longer chosen",
         "median decision (s)", "flags"], _annotator_rows(audit))  # fmt: skip
    kappa = _table(
        ["annotators", "shared pairs", "Cohen's kappa", "95% CI"],
        [[html.escape(" / ".join(p.annotators)), p.n, f"{p.kappa:.2f}", f"{p.ci[0]:.2f} to {p.ci[1]:.2f}"]
         for p in audit.agreement.kappa_pairs],
    )  # fmt: skip
    heads = ["rank", "source", "score", "95% CI", "comparisons"]
    plain, style = (_table(heads, [_rank_row(r) for r in rows]) for rows in (audit.ranking.plain, audit.ranking.style))
    d = audit.definitions
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>
<h2>Findings</h2><ul>{items}</ul><h2>Figures</h2>{imgs}
<h2>Annotators</h2>{ann}{reliability_html(audit.reliability)}{judge_html(audit.judges)}
<h2>Pairwise agreement</h2>{kappa}
<h2>Length ruler on the votes</h2>{_ruler_html(audit.ruler)}
{verified_html(audit.preferred_vs_verified)}
<h2>Bradley-Terry ranking</h2><h3>Plain</h3>{plain}
<h3>Style-controlled (length and Markdown headers, lists, bold as covariates)</h3>{style}
<h2>Definitions</h2><p>{html.escape(d.random_clicker_rule)}</p>
<p>Hedging markers (per 100 words): <code>{html.escape(", ".join(d.hedge_markers))}</code></p>
<p>Confidence markers (per 100 words): <code>{html.escape(", ".join(d.confidence_markers))}</code></p>
<p>A pair is a prompt and an unordered pair of response ids; ties and both_bad are categories of their own in
agreement; skips are left out. The full numbers are in the JSON report.</p></body></html>"""


def write_json(audit: AuditResult, path: str | Path) -> Path:
    """The versioned JSON form (AuditResult.to_dict: schema_version, NaN as null)."""
    path = Path(path)
    path.write_text(json.dumps(audit.to_dict(), indent=2, allow_nan=False))
    return path


def write_html(audit: AuditResult, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(render_html(audit), encoding="utf-8")
    return path


def read_json(path: str | Path) -> AuditResult:
    """An audit.json written by write_json (or `python -m annotate audit --json`), typed again."""
    return AuditResult.from_dict(json.loads(Path(path).read_text()))
