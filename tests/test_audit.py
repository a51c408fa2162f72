"""The audit recovers biases planted in simulated annotators, written through a real store.

Simulation (seeded): 500 prompts, each with two responses from two of four sources whose true Bradley-Terry
strengths are known, lengths independent of quality. Six annotators judge every pair (sides shuffled), re-judge
15% with sides swapped, and see 20 honeypots:
- h1..h3 honest: the true winner 90% of the time, a tie 5% of the time;
- longer: 60% of the time picks the longer response (true winners are the longer one for exactly half the
  pairs), otherwise judges like an honest one without ties, so
  P(longer | decisive) = 0.6 + 0.4 * 0.5 = 0.8; its criteria['correct'] is its honest judgment, so the
  overall pick contradicts it with probability 0.6 * 0.5 = 0.3;
- lefty: 20% of the time picks the left response, otherwise honest without ties: P(left) = 0.2 + 0.8 * 0.5 = 0.6;
- random: a fair coin between A and B.
Gold pairs (20% of prompts) carry gold_score in the pool's meta; true gold accuracy is 0.95 * 0.9 = 0.855
for honest annotators, 0.6 * 0.5 + 0.4 * 0.9 = 0.66 for longer, 0.2 * 0.5 + 0.8 * 0.9 = 0.82 for lefty, 0.5 for
random. The CIs checked are the audit's own 95% intervals: each planted value must lie inside its interval;
unbiased annotators must not be flagged (a per-annotator CI of theirs may miss 50% 1 time in 20 by design).
"""

from __future__ import annotations

import gzip
import json
import math
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from annotate.audit import gold_from_pool, run_audit
from annotate.audit_dashboard import dashboard_figures, dashboard_summary
from annotate.audit_report import read_json, render_html, write_json
from annotate.audit_stats import fit_logistic, krippendorff_alpha, newton_logistic
from annotate.audit_types import SCHEMA_VERSION, AuditResult
from annotate.pool import read_pool, write_pool
from annotate.schema import new_comparison
from annotate.store import ComparisonStore, read_table

HH = Path(__file__).parents[2] / "shared/data/hh-rlhf-harmless-sample.jsonl.gz"
STRENGTH = {"strong": 1.5, "good": 0.5, "fair": -0.5, "weak": -1.5}
WORDS = "the a of to and is it in that this for answer result value step case".split()
TRUE_GOLD = {"h1": 0.855, "h2": 0.855, "h3": 0.855, "longer": 0.66, "lefty": 0.82, "random": 0.5}


def _text(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(5, 120))))


def _decide(who: str, rng, truth: str, longer: str, left: str) -> tuple[str, str | None]:
    """(choice, criteria['correct'] or None) for one view of a pair; truth/longer/left are 'a' or 'b'."""
    other = {"a": "b", "b": "a"}
    honest = truth if rng.random() < 0.9 else other[truth]
    if who == "random":
        return str(rng.choice(["a", "b"])), None
    if who == "longer":
        return (longer if rng.random() < 0.6 else honest), honest
    if who == "lefty":
        return (left if rng.random() < 0.2 else honest), honest
    choice = "tie" if rng.random() < 0.05 else honest
    return choice, honest if choice != "tie" else None


def _honeypot_choice(who: str, rng, left: str) -> str:
    if who in ("random",):
        return str(rng.choice(["a", "b"]))
    if who == "lefty":
        return left if rng.random() < 0.6 else {"a": "b", "b": "a"}[left]
    return "tie" if rng.random() < 0.9 else str(rng.choice(["a", "b"]))


def simulate(tmp_path: Path, seed: int = 7, prompts: int = 500) -> tuple[Path, Path]:
    """Write a pool (with gold scores) and a store of simulated votes; returns (store_dir, pool_path)."""
    rng = np.random.default_rng(seed)
    sources = list(STRENGTH)
    pool_rows, pairs = [], []
    for i in range(prompts):
        sa, sb = rng.choice(sources, size=2, replace=False)
        truth = "a" if rng.random() < 1 / (1 + math.exp(STRENGTH[sb] - STRENGTH[sa])) else "b"
        # Half the true winners are the longer response, so length carries no information about quality.
        short, long_ = sorted((_text(rng), _text(rng)), key=len)
        while len(short) == len(long_):
            short, long_ = sorted((_text(rng), _text(rng)), key=len)
        win, lose = (long_, short) if i % 2 == 0 else (short, long_)
        ra, rb = (win, lose) if truth == "a" else (lose, win)
        gold = i % 5 == 0
        prompt = [{"role": "user", "content": f"question {i}"}]
        for rid, text, src, side in ((f"p{i}-x", ra, sa, "a"), (f"p{i}-y", rb, sb, "b")):
            meta = {"gold_score": float(side == truth)} if gold else {}
            pool_rows.append(dict(prompt_id=f"p{i}", prompt=prompt, response_id=rid, response=text, source=src,
                                  meta=json.dumps(meta)))  # fmt: skip
        pairs.append((f"p{i}", prompt, (f"p{i}-x", ra, sa), (f"p{i}-y", rb, sb), truth))
    pool = write_pool(pool_rows, tmp_path / "pool.jsonl")

    t0, records = datetime(2025, 1, 1, tzinfo=UTC), []
    for who in ("h1", "h2", "h3", "longer", "lefty", "random"):
        views = [(j, 0) for j in range(len(pairs))]
        views += [(int(j), 1) for j in rng.choice(len(pairs), size=int(0.15 * len(pairs)), replace=False)]
        first_left = {}
        for k, (j, repeat) in enumerate(views):
            pid, prompt, a, b, truth = pairs[j]
            # an audit repeat shows the pair again with the sides swapped
            left = {"a": "b", "b": "a"}[first_left[j]] if repeat else str(rng.choice(["a", "b"]))
            first_left.setdefault(j, left)
            longer = "a" if len(a[1]) > len(b[1]) else "b"
            choice, correct = _decide(who, rng, truth, longer, left)
            records.append(new_comparison(
                prompt_id=pid, prompt=prompt, response_a_id=a[0], response_a=a[1], source_a=a[2],
                response_b_id=b[0], response_b=b[1], source_b=b[2], left=left, choice=choice, annotator=who,
                strength=None if choice == "tie" else 2, criteria={"correct": correct} if correct else {},
                decision_ms=int(rng.integers(300, 900) if who == "random" else rng.integers(3000, 20000)),
                created_at=t0 + timedelta(seconds=10 * k + 5000 * repeat),
            ))  # fmt: skip
        for k in range(20):
            pid, prompt, a, _, _ = pairs[int(rng.integers(len(pairs)))]
            left = str(rng.choice(["a", "b"]))
            records.append(new_comparison(
                prompt_id=pid, prompt=prompt, response_a_id=a[0], response_a=a[1], response_b_id=a[0],
                response_b=a[1], source_a=a[2], source_b=a[2], left=left, annotator=who,
                choice=_honeypot_choice(who, rng, left), created_at=t0 + timedelta(days=1, seconds=k),
            ))  # fmt: skip
    store = ComparisonStore(tmp_path / "store")
    store.write_batch(records)
    # An undone vote (vote + retraction) must not count anywhere.
    undone = dict(records[0], comparison_id="undone-1", choice="b", annotator="h1")
    store.append(undone)
    store.append(dict(undone, comparison_id="undo-1", retracts="undone-1"))
    store.close()
    return tmp_path / "store", pool


@pytest.fixture(scope="module")
def audit(tmp_path_factory) -> AuditResult:
    store_dir, pool = simulate(tmp_path_factory.mktemp("sim"))
    return run_audit(read_table(str(store_dir)), gold_from_pool(read_pool(pool)), n_boot=300)


def _inside(value: float, ci: tuple[float, float]) -> bool:
    return ci[0] <= value <= ci[1]


def test_length_bias_recovered(audit):
    p = audit.length.p_longer.per_annotator
    assert _inside(0.8, p["longer"].ci) and p["longer"].p_value < 1e-6, p["longer"]
    for who in ("h1", "h2", "h3", "lefty", "random"):  # no false alarm on the others
        assert "length_bias" not in audit.flags.per_annotator[who], (who, p[who])
    slope = audit.length.regression.per_annotator["longer"].coefficients["length"]
    assert slope.ci[0] > 0  # choosing more often the longer side: a positive length slope
    assert audit.flags.per_annotator["longer"] == ("length_bias",)
    assert audit.annotators["longer"].flags == ("length_bias",)


def test_position_bias_recovered(audit):
    p = audit.position.per_annotator
    assert _inside(0.6, p["lefty"].ci) and p["lefty"].p_value < 0.01
    for who in ("h1", "h2", "h3", "longer", "random"):
        assert "position_bias" not in audit.flags.per_annotator[who], (who, p[who])
    assert audit.flags.per_annotator["lefty"] == ("position_bias",)
    reg = audit.length.regression.per_annotator
    assert reg["lefty"].coefficients["position"].ci[0] > 0 and _inside(0, reg["h1"].coefficients["position"].ci)
    # A coin flipper changes its winner on half the swapped repeats; honest annotators far less often.
    flips = audit.position.flips.per_annotator
    assert _inside(0.5, flips["random"].ci) and flips["h1"].ci[1] < 0.4


def test_random_clicker_flagged_and_only_it(audit):
    assert audit.flags.random_clickers == ("random",)
    ann = audit.annotators
    assert ann["random"].majority.p_value >= 0.05
    assert all(ann[w].majority.p_value < 1e-6 for w in ("h1", "h2", "h3", "longer", "lefty"))
    for who in ("longer", "lefty", "random"):
        assert _inside(TRUE_GOLD[who], ann[who].gold.ci), (who, ann[who].gold)
    for who in ("h1", "h2", "h3"):  # honest annotators: clearly better than chance and than the coin flipper
        assert ann[who].gold.p_value < 1e-6 and ann[who].gold.ci[0] > ann["random"].gold.ci[1]
    assert ann["h1"].votes == 500 + 75 + 20  # the undone vote and its retraction are not counted
    assert ann["h1"].honeypot.tie_rate > 0.7 and ann["random"].decision_ms.median < 1000


def test_preferred_vs_correct(audit):
    p = audit.preferred_vs_correct.per_annotator
    assert _inside(0.3, p["longer"].ci)
    assert p["h1"].k == 0 and p["h1"].n > 400


def test_bradley_terry_recovers_order(audit):
    order = sorted(STRENGTH, key=STRENGTH.get, reverse=True)
    for rows in (audit.ranking.plain, audit.ranking.style):
        assert [r.source for r in rows] == order
        assert all(_inside(r.score, r.ci) for r in rows)
    top, bottom = audit.ranking.plain[0], audit.ranking.plain[-1]
    assert top.ci[0] > bottom.ci[1]


def test_agreement_is_moderate_and_bounded(audit):
    ag = audit.agreement
    assert ag.alpha.ci[0] < ag.alpha.alpha < ag.alpha.ci[1]
    kappa = {p.annotators: p for p in ag.kappa_pairs}
    # honest pairs agree far beyond chance; anyone paired with the coin flipper does not
    assert kappa[("h1", "h2")].ci[0] > 0.3
    assert _inside(0.0, kappa[("h1", "random")].ci)


def _hand_store(tmp_path: Path) -> Path:
    """Two annotators, five pairs, labels by winning response: X X Y tie Y vs X Y Y tie Y. Annotator 2 sees
    every pair with response a/b swapped and on the other side, so only response-id normalisation agrees."""
    plan = [("x", "x"), ("x", "y"), ("y", "y"), ("tie", "tie"), ("y", "y")]
    store = ComparisonStore(tmp_path / "hand")
    for i, (c1, c2) in enumerate(plan):
        base = dict(prompt_id=f"q{i}", prompt=[{"role": "user", "content": "hi"}], source_a="m1", source_b="m2")
        x, y = (f"q{i}-x", "short"), (f"q{i}-y", "a longer reply")
        r1 = new_comparison(**base, response_a_id=x[0], response_a=x[1], response_b_id=y[0], response_b=y[1],
                            left="a", choice={"x": "a", "y": "b", "tie": "tie"}[c1], annotator="ann1")  # fmt: skip
        r2 = new_comparison(**base, response_a_id=y[0], response_a=y[1], response_b_id=x[0], response_b=x[1],
                            left="a", choice={"x": "b", "y": "a", "tie": "tie"}[c2], annotator="ann2")  # fmt: skip
        store.append_many([r1, r2])
    store.close()
    return tmp_path / "hand"


def test_kappa_and_alpha_match_hand_computation(tmp_path):
    result = run_audit(read_table(str(_hand_store(tmp_path))), n_boot=200)
    # Cohen: p_o = 4/5; marginals X 2/5,1/5  Y 2/5,3/5  tie 1/5,1/5 -> p_e = 9/25; kappa = (20-9)/(25-9) = 11/16
    (pair,) = result.agreement.kappa_pairs
    assert pair.annotators == ("ann1", "ann2") and pair.n == 5
    assert pair.kappa == pytest.approx(11 / 16)
    # Krippendorff: n = 10 values, n_X = 3, n_Y = 5, n_tie = 2; one disagreeing unit contributes o_XY + o_YX = 2;
    # alpha = 1 - (n - 1) * 2 / (n^2 - sum n_c^2) = 1 - 9 * 2 / (100 - 38) = 44/62
    assert result.agreement.alpha.alpha == pytest.approx(44 / 62)
    assert result.agreement.alpha.units == 5


def test_alpha_matches_krippendorff_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", nominal example: 4 observers, 12 units
    # with missing values; published alpha = 0.743.
    data = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
        [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
    ]
    counts = np.zeros((12, 5))
    for row in data:
        for u, value in enumerate(row):
            if value is not None:
                counts[u, value - 1] += 1
    assert krippendorff_alpha(counts, n_boot=0).alpha == pytest.approx(0.743, abs=5e-4)


def test_style_control_discounts_verbosity(tmp_path):
    """Two sources of equal quality, one verbose with bullet lists; annotators reward length. Plain BT puts the
    verbose source ahead; style control closes most of the gap and attributes it to the length covariate."""
    rng = np.random.default_rng(3)
    records, t0 = [], datetime(2025, 1, 1, tzinfo=UTC)
    for i in range(600):
        terse = " ".join(rng.choice(WORDS, size=int(rng.integers(5, 40))))
        verbose = "\n".join(f"- {_text(rng)}" for _ in range(int(rng.integers(1, 4))))
        ids = ((f"v{i}", verbose, "verbose"), (f"t{i}", terse, "terse"))
        a, b = ids if rng.random() < 0.5 else ids[::-1]
        longer = "a" if len(a[1]) > len(b[1]) else "b"
        choice = longer if rng.random() < 0.4 else str(rng.choice(["a", "b"]))
        records.append(new_comparison(
            prompt_id=f"s{i}", prompt=[{"role": "user", "content": "q"}], response_a_id=a[0], response_a=a[1],
            source_a=a[2], response_b_id=b[0], response_b=b[1], source_b=b[2], choice=choice,
            left=str(rng.choice(["a", "b"])), annotator=f"u{i % 3}", created_at=t0 + timedelta(seconds=i),
        ))  # fmt: skip
    ComparisonStore(tmp_path / "s").write_batch(records)
    rank = run_audit(read_table(str(tmp_path / "s")), n_boot=100).ranking
    gap = {k: {r.source: r.score for r in rows} for k, rows in (("plain", rank.plain), ("style", rank.style))}
    plain_gap = gap["plain"]["verbose"] - gap["plain"]["terse"]
    style_gap = gap["style"]["verbose"] - gap["style"]["terse"]
    assert plain_gap > 50 and abs(style_gap) < plain_gap / 2
    assert rank.style_coefficients["length"].ci[0] > 0


def test_dashboard_seam(tmp_path):
    summary = dashboard_summary(read_table(str(_hand_store(tmp_path))), n_boot=50)
    json.dumps(summary.to_dict(), allow_nan=False)  # JSON-able, for gr.JSON / the report
    assert summary.audit.summary.votes == 10 and {r.annotator for r in summary.annotators} == {"ann1", "ann2"}
    assert summary.findings and all(isinstance(s, str) for s in summary.findings)
    figs = dashboard_figures(summary)
    assert set(figs) == {"position", "length", "annotators", "ranking", "reliability"}
    assert all(f.axes for f in figs.values())
    png = tmp_path / "position.png"
    figs["position"].savefig(png)
    assert png.read_bytes()[:4] == b"\x89PNG"


def _direct_p_longer(path: Path) -> tuple[int, int]:
    """Count straight from the file: records whose chosen reply is longer than the rejected one (characters;
    a reply is the text after the last '\\n\\nAssistant:' the two dialogues share, stripped; equal lengths left
    out, as the audit does)."""
    k = n = 0
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            cut = os.path.commonprefix([row["chosen"], row["rejected"]]).rfind("\n\nAssistant:") + 12
            lc, lr = len(row["chosen"][cut:].strip()), len(row["rejected"][cut:].strip())
            if lc != lr:
                n += 1
                k += lc > lr
    return k, n


@pytest.mark.skipif(not HH.exists(), reason="shared HH-RLHF sample not present")
def test_length_bias_on_hh_rlhf_equals_direct_count(tmp_path):
    from annotate.importers import read_hh, to_comparisons

    pairs, _ = read_hh(HH)
    records = to_comparisons(pairs, path=HH, fmt="hh", annotator="hh-rlhf", source="hh-rlhf")
    ComparisonStore(tmp_path / "hh").write_batch(records)
    result = run_audit(read_table(str(tmp_path / "hh")), n_boot=50)
    k, n = _direct_p_longer(HH)
    overall = result.length.p_longer.overall
    assert (overall.k, overall.n) == (k, n) and n > 900
    assert overall.rate == pytest.approx(k / n)
    # imported pairs were never shown left/right: no position figures, no position term in the regression
    assert result.position.overall.n == 0
    assert "position" not in result.length.regression.overall.coefficients


def test_empty_and_tiny_stores_give_a_report(tmp_path):
    """The Dashboard calls the audit on a fresh store: no votes, one vote, only skips, one honeypot."""

    def rec(i: int, **kw) -> dict:
        base = dict(prompt_id="p", prompt=[{"role": "user", "content": "q"}], response_a_id="x", response_a="aa",
                    response_b_id="y", response_b="b", choice="a", annotator="u",
                    created_at=datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=i))  # fmt: skip
        return new_comparison(**{**base, **kw})

    cases = {
        "empty": [],
        "one": [rec(0)],
        "skips": [rec(0, choice="skip"), rec(1, choice="skip", annotator="v")],
        "honeypot": [rec(0, response_b_id="x", response_b="aa", choice="tie")],
    }
    for name, records in cases.items():
        store = ComparisonStore(tmp_path / name)
        store.write_batch(records)
        summary = dashboard_summary(read_table(str(tmp_path / name)), n_boot=20)
        json.dumps(summary.to_dict(), allow_nan=False)
        assert summary.audit.summary.votes == len(records), name
        assert "<h1>" in render_html(summary.audit)
        assert set(dashboard_figures(summary)) == {"position", "length", "annotators", "ranking", "reliability"}
        # every shape of result survives the JSON round trip; an undefined figure is null in JSON, NaN again after
        data = summary.audit.to_dict()
        back = AuditResult.from_dict(json.loads(json.dumps(data, allow_nan=False)))
        assert back.to_dict() == data and math.isnan(back.agreement.alpha.alpha), name
    assert summary.audit.summary.honeypot_votes == 1 and summary.audit.annotators["u"].honeypot.tie_rate == 1


def test_result_round_trips_through_json(audit, tmp_path):
    """to_dict -> JSON -> from_dict gives the same result; the JSON is versioned and free of NaN."""
    data = audit.to_dict()
    assert data["schema_version"] == SCHEMA_VERSION and "store" not in data
    text = json.dumps(data, allow_nan=False)
    back = AuditResult.from_dict(json.loads(text))
    assert back.to_dict() == data
    assert back.ranking.plain == audit.ranking.plain and back.flags == audit.flags
    assert back.annotators["longer"].flags == ("length_bias",) and isinstance(back.agreement.alpha.ci, tuple)
    assert read_json(write_json(audit, tmp_path / "a.json")).to_dict() == data
    # a file from before the version field (same keys) still reads; a newer major version is refused
    legacy = {k: v for k, v in data.items() if k != "schema_version"}
    assert AuditResult.from_dict(legacy).to_dict() == data
    with pytest.raises(ValueError, match="schema_version"):
        AuditResult.from_dict({**data, "schema_version": SCHEMA_VERSION + 1})
    with pytest.raises(ValueError):
        AuditResult.from_dict({"schema_version": SCHEMA_VERSION, "summary": {}})


def _length_loving_store(path: Path, p_longer: float, prompts: int = 300, seed: int = 5) -> Path:
    """Three annotators judge every pair of two random-length answers, picking the longer with probability
    p_longer and the shorter otherwise (no quality difference at all); lengths never tie."""
    rng = np.random.default_rng(seed)
    records, t0 = [], datetime(2025, 1, 1, tzinfo=UTC)
    for i in range(prompts):
        a, b = _text(rng), _text(rng)
        while len(a) == len(b):
            b = _text(rng)
        longer = "a" if len(a) > len(b) else "b"
        for who in ("u1", "u2", "u3"):
            choice = longer if rng.random() < p_longer else {"a": "b", "b": "a"}[longer]
            records.append(new_comparison(
                prompt_id=f"p{i}", prompt=[{"role": "user", "content": "q"}], response_a_id=f"p{i}-a", response_a=a,
                response_b_id=f"p{i}-b", response_b=b, choice=choice, left=str(rng.choice(["a", "b"])), annotator=who,
                created_at=t0 + timedelta(seconds=len(records)),
            ))  # fmt: skip
    ComparisonStore(path).write_batch(records)
    return path


def test_length_ruler_on_votes_where_annotators_prefer_the_longer(tmp_path):
    """Annotators who pick the longer answer 75% of the time: "pick the longer" predicts ~75% of the votes, the
    style-only model (mostly its length weight) as much in and out of sample, and the findings say so."""
    from annotate.audit_report import findings
    from annotate.audit_ruler import fit_style_model, rule_accuracies

    table = read_table(str(_length_loving_store(tmp_path / "s", 0.75)))
    result = run_audit(table, n_boot=50)
    r = result.ruler
    assert (r.votes, r.prompts, r.folds) == (900, 300, 5)
    assert _inside(0.75, r.longer.ci) and r.longer.ci[0] > 0.7
    assert r.shorter.accuracy == pytest.approx(1 - r.longer.accuracy)  # no equal lengths: the two rules mirror
    assert r.style_weights["length"] > 0.5
    # Cross-validation by prompt changes little here: length is the whole story, and one weight carries it.
    assert abs(r.style_cv.accuracy - r.style_in_sample.accuracy) < 0.03
    assert r.best == "longer"
    # The audit's figures are annotate.audit_ruler's own rules on the same votes, chosen against rejected.
    rows = table.to_pylist()
    chosen = [x[f"response_{x['choice']}"] for x in rows]
    rejected = [x["response_b" if x["choice"] == "a" else "response_a"] for x in rows]
    style = fit_style_model(chosen, rejected)
    rules = rule_accuracies(chosen, rejected, style)
    assert (r.longer.accuracy, r.shorter.accuracy) == (rules["longer"], rules["shorter"])
    assert r.style_in_sample.accuracy == pytest.approx(rules["style"])
    assert r.style_weights == pytest.approx(style.coefficients())
    pct = f"{100 * r.longer.accuracy:.0f}%"
    text = findings(result)
    assert any(s.startswith(f'Length alone ("pick the longer") predicts {pct} of votes') for s in text), text
    page = render_html(result)
    assert "Length ruler on the votes" in page and "&quot;pick the longer&quot;" in page and pct in page
    # Control: annotators indifferent to length. No rule clears chance, and the findings say that instead.
    control = run_audit(read_table(str(_length_loving_store(tmp_path / "c", 0.5))), n_boot=50)
    assert control.ruler.longer.ci[0] < 0.5 < control.ruler.longer.ci[1]
    assert control.ruler.style_cv.ci[0] < 0.5
    assert any(s.startswith("Length and style alone do not predict the votes") for s in findings(control))


def test_version_1_audit_json_still_reads(audit):
    """A file written before the vote ruler (schema 1, with or without the version key) reads, with no ruler, and
    its report renders; run_audit's own output always carries the ruler (version 2 on; reliability from 3:
    tests/test_audit_reliability.py)."""
    data = audit.to_dict()
    assert data["schema_version"] == SCHEMA_VERSION >= 2 and data["ruler"]["votes"] > 0
    v1 = {k: v for k, v in data.items() if k not in ("ruler", "reliability")}
    v1["settings"] = {k: v for k, v in data["settings"].items() if k != "ruler_folds"}
    for old in ({**v1, "schema_version": 1}, {k: v for k, v in v1.items() if k != "schema_version"}):
        back = AuditResult.from_dict(json.loads(json.dumps(old)))
        assert back.ruler is None and back.settings.ruler_folds == 5
        assert back.ranking.plain == audit.ranking.plain and back.flags == audit.flags
        assert "Not in this audit" in render_html(back)


def test_one_logistic_solver_batched_matches_single_fits():
    """newton_logistic solves a batch of weightings at once (the Bradley-Terry bootstrap) with the same answer
    as one fit per weighting, and fit_logistic (the bias regressions) agrees with it."""
    rng = np.random.default_rng(0)
    x = np.column_stack([np.ones(300), rng.normal(size=(300, 2))])
    y = (rng.random(300) < 1 / (1 + np.exp(-(x @ [0.3, 1.0, -0.5])))).astype(float)
    w = rng.poisson(1.0, size=(4, 300)).astype(float)
    batch, ok = newton_logistic(x, y, w, l2=0.01)
    assert ok.all()
    for i in range(4):
        single, conv = newton_logistic(x, y, w[i], l2=0.01)
        assert conv and np.allclose(batch[i], single, atol=1e-8)
        assert np.allclose(fit_logistic(x, y, weights=w[i], l2=0.01, with_cov=False)[0], single, atol=1e-8)
    # separable data without a penalty (no finite MLE): a finite, large slope of the right sign
    xs = np.column_stack([np.ones(20), np.r_[-np.ones(10), np.ones(10)]])
    beta, cov = fit_logistic(xs, np.r_[np.zeros(10), np.ones(10)])
    assert np.isfinite(beta).all() and beta[1] > 3 and cov is not None
