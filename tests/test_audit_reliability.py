"""Annotator reliability (annotate.audit_reliability) and the judge bias card (annotate.audit_judge) in the audit,
its report and JSON, the Dashboard and the dataset card, on simulated annotators writing into a real store.

Simulation (seeded): 160 prompts, each with a short and a long response (lengths never tie) and a better one, the
longer for exactly half the prompts, so length says nothing about quality. Five humans judge every pair once, sides
and left/right shuffled: good1, good2 and HOSTILE pick the better response 90% of the time (HOSTILE is a good
annotator whose name is markup: it must show as text everywhere), rand picks at random and flipper picks the worse
one 90% of the time. On 20 prompts everyone also judges a honeypot (the short text against a copy of itself under
another id), at random. Three AI judges judge every pair in both orders, as the judge command writes them (same
a/b, `left` "a" then "b"): judge:left always picks the response on the left, judge:long always the longer one,
judge:good the better one 90% of the time, the same in both orders.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from annotate.__main__ import main as annotate_main
from annotate.audit import run_audit
from annotate.audit_report import findings, make_figures, read_json, render_html
from annotate.audit_types import AuditResult
from annotate.cards import _audit_section
from annotate.schema import new_comparison
from annotate.session import dashboard_view
from annotate.store import ComparisonStore, read_table

HOSTILE = '<img src=x onerror="alert(1)">'
HUMANS = {"good1": 0.9, "good2": 0.9, HOSTILE: 0.9, "rand": 0.5, "flipper": 0.1}  # P(picks the better one)
JUDGES = ("judge:left", "judge:long", "judge:good")
WORDS = "the a of to and is it in that this for answer result value step case".split()
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _texts(rng: np.random.Generator, i: int) -> tuple[str, str]:
    """(short, long) with different lengths."""
    short = " ".join(rng.choice(WORDS, size=int(rng.integers(4, 15))))
    return short, short + " " + " ".join(rng.choice(WORDS, size=int(rng.integers(10, 60))))


def simulate(root: Path, prompts: int = 160, seed: int = 3, judges: tuple[str, ...] = JUDGES) -> Path:
    """Write the store of the module docstring; returns its directory."""
    rng = np.random.default_rng(seed)
    records: list[dict] = []

    def vote(pid: str, x: tuple[str, str], y: tuple[str, str], choice: str, who: str, left: str) -> None:
        records.append(new_comparison(
            prompt_id=pid, prompt=[{"role": "user", "content": f"question {pid}"}], response_a_id=x[0],
            response_a=x[1], response_b_id=y[0], response_b=y[1], choice=choice, annotator=who, left=left,
            source_a="m", source_b="m", session="judge:run" if who.startswith("judge:") else "s",
            created_at=T0 + timedelta(seconds=len(records)),
        ))  # fmt: skip

    for i in range(prompts):
        pid = f"p{i}"
        short, long_ = _texts(rng, i)
        tags = ("x", "y") if rng.random() < 0.5 else ("y", "x")  # ids say nothing of length (the audit's lo/hi order)
        cand = {"short": (f"{pid}-{tags[0]}", short), "long": (f"{pid}-{tags[1]}", long_)}
        better = "long" if i % 2 else "short"  # the longer is better for exactly half the prompts
        for who, acc in HUMANS.items():
            picked = better if rng.random() < acc else ("short" if better == "long" else "long")
            x, y = (cand["short"], cand["long"]) if rng.random() < 0.5 else (cand["long"], cand["short"])
            vote(pid, x, y, "a" if x == cand[picked] else "b", who, str(rng.choice(["a", "b"])))
        if i < 20:  # a honeypot: one text twice under two ids
            twin = (f"{pid}-twin", short)
            for who in HUMANS:
                vote(pid, cand["short"], twin, str(rng.choice(["a", "b"])), who, str(rng.choice(["a", "b"])))
        good_pick = better if rng.random() < 0.9 else ("short" if better == "long" else "long")
        x, y = cand["short"], cand["long"]
        for who in judges:
            for left in ("a", "b"):  # both orders: x shown first, then y
                if who == "judge:left":
                    choice = left
                else:
                    picked = "long" if who == "judge:long" else good_pick
                    choice = "a" if x == cand[picked] else "b"
                vote(pid, x, y, choice, who, left)
    store = ComparisonStore(root / "store")
    store.write_batch(records)
    store.close()
    return root / "store"


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    store = simulate(tmp_path_factory.mktemp("reliability"))
    return store, run_audit(read_table(str(store)), n_boot=50)


def test_reliability_ranks_the_simulated_annotators(sim):
    _, audit = sim
    r = audit.reliability
    assert r is not None and r.method == "dawid-skene" and r.converged
    # Honeypots are left out of the fit: 160 pairs x (5 humans + 3 judges x 2 orders) decisive votes.
    assert r.pairs == 160 and r.votes == 160 * (5 + 6)
    ann = r.annotators
    for a in ann.values():
        assert a.ci[0] <= a.reliability <= a.ci[1]
    good = [ann[n] for n in ("good1", "good2", HOSTILE)]
    assert min(a.ci[0] for a in good) > ann["rand"].ci[1]
    assert ann["rand"].ci[0] > ann["flipper"].ci[1]
    assert ann["flipper"].reliability < 0.2 and all(a.reliability > 0.8 for a in good)
    assert ann["rand"].ci[0] < 0.5 < ann["rand"].ci[1]  # a coin: whether its CI clears 0.6 is the draw's luck
    assert "flipper" in r.unreliable and not set(r.unreliable) & {"good1", "good2", HOSTILE, "judge:good"}
    # The always-left judge: right whenever the better response is on the left, wrong whenever it is on the right.
    lefty = ann["judge:left"]
    assert lefty.acc_better_left > 0.9 and lefty.acc_better_right < 0.1
    text = findings(audit)
    assert any(s.startswith("flipper looks unreliable") for s in text), text


def test_report_and_json_carry_reliability(sim, tmp_path, capsys):
    """The CLI writes the section to audit.json (schema 3, read back typed) and the HTML report, with its figure;
    --reliability-threshold moves the line: at 30% only the flipper is unreliable."""
    store, audit = sim
    out_json, out_html = tmp_path / "audit.json", tmp_path / "audit.html"
    rc = annotate_main(["audit", "--store", str(store), "--json", str(out_json), "--report", str(out_html),
                        "--n-boot", "20", "--reliability-threshold", "0.3"])  # fmt: skip
    assert rc == 0 and "flipper looks unreliable" in capsys.readouterr().out
    data = json.loads(out_json.read_text())
    assert data["schema_version"] == 3
    rel = {name: a["reliability"] for name, a in data["reliability"]["annotators"].items()}
    assert min(rel["good1"], rel["good2"], rel[HOSTILE]) > rel["rand"] > rel["flipper"]
    assert data["reliability"]["unreliable"] == ["flipper"] and data["reliability"]["threshold"] == 0.3
    assert data["reliability"]["annotators"] == audit.to_dict()["reliability"]["annotators"]
    assert read_json(out_json).reliability.annotators == audit.reliability.annotators
    page = out_html.read_text()
    assert "Annotator reliability (Dawid-Skene)" in page and "<td>unreliable</td>" in page
    assert HOSTILE not in page and "&lt;img src=x" in page
    figs = make_figures(audit)
    assert {"reliability", "judges"} <= set(figs) and figs["reliability"].axes


def test_older_audit_json_reads_without_reliability(sim):
    """A schema-2 file (no reliability, no judges) still reads and renders; run_audit's own output is schema 3."""
    _, audit = sim
    v2 = {k: v for k, v in audit.to_dict().items() if k not in ("reliability", "judges")}
    back = AuditResult.from_dict(json.loads(json.dumps({**v2, "schema_version": 2})))
    assert back.reliability is None and back.judges is None and back.ruler == audit.ruler
    page = render_html(back)
    assert "Not in this audit (read from an audit JSON of schema version 1 or 2)" in page
    assert "Judge bias card" not in page and "judges" not in make_figures(back)


def test_judge_bias_card(sim):
    """The always-left judge is flagged for position bias with a flip rate of 1; the length-loving one for length
    bias beyond the humans'; the good judge for nothing, and it agrees with the human majority most."""
    _, audit = sim
    card = audit.judges
    assert card is not None and set(card.judges) == set(JUDGES)
    left, long_, good = (card.judges[n] for n in JUDGES)
    humans = card.humans
    assert left.flags == ("position_bias",)
    assert left.left.rate == 1.0 and left.left.ci[0] > 0.5
    assert left.flips.n == 160 and left.flips.rate == 1.0
    assert long_.flags == ("length_bias", "length_bias_beyond_humans")
    assert long_.longer.rate == 1.0 and long_.flips.rate == 0.0 and long_.left.rate == 0.5
    assert long_.ruler.longer.accuracy == 1.0 and long_.regression is not None
    assert good.flags == () and good.flips.rate == 0.0
    # Next to the humans: they chose the longer about half the time, and the card says so.
    assert humans.votes == 5 * (160 + 20) and humans.longer.ci[0] < 0.5 < humans.longer.ci[1]
    assert good.agreement.ci[0] > max(left.agreement.ci[1], long_.agreement.ci[1])
    assert 0.3 < left.agreement.rate < 0.7 and left.agreement.n == 320
    text = " ".join(findings(audit))
    assert "judge:left is flagged for position bias" in text and "judge:long is flagged for length bias" in text
    assert "judge:good is flagged" not in text
    page = render_html(audit)
    assert "Judge bias card" in page and "<td>judge:left</td>" in page and "length_bias_beyond_humans" in page


def test_no_judges_no_card(tmp_path):
    """Without judges the card is absent from the result, the JSON, the report, the figures, the card and the
    Dashboard; reliability is there all the same."""
    store = simulate(tmp_path, prompts=40, judges=())
    audit = run_audit(read_table(str(store)), n_boot=20)
    assert audit.judges is None and "judges" not in audit.to_dict() and audit.reliability.pairs == 40
    assert "Judge bias card" not in render_html(audit) and "judges" not in make_figures(audit)
    assert "Judge bias" not in _audit_section(audit, "") and "Annotator reliability" in _audit_section(audit, "")
    view = dashboard_view(ComparisonStore(store))
    assert view["judges"] == "" and "judges" not in view["figures"] and "reliability" in view["figures"]


def test_dashboard_shows_reliability_and_the_judge_card(sim):
    """Both sections through the one rendering path: HOSTILE is text, never markup."""
    store, _ = sim
    view = dashboard_view(ComparisonStore(store))
    rel, judges = view["reliability"], view["judges"]
    assert "Annotator reliability" in rel and "<td>unreliable</td>" in rel and "<td>flipper</td>" in rel
    assert "Judge bias card" in judges and "<td>judge:left</td>" in judges and "position_bias" in judges
    for html in (rel, judges, view["annotators"], view["findings"]):
        assert "<img" not in html
    assert "&lt;img" in rel and "unreliable" in view["annotators"]
    assert {"reliability", "judges"} <= set(view["figures"])
    assert "flipper looks unreliable" in view["findings"] and "judge:left is flagged" in view["findings"]


def test_dashboard_tab_shows_the_judge_card_only_with_judges(sim, tmp_path):
    gr = pytest.importorskip("gradio")
    from annotate.pool import read_pool
    from annotate.sampler import PairSampler
    from annotate.ui import AppConfig, Handlers, _layout, make_service

    store_dir, _ = sim
    pool = read_pool(Path(__file__).resolve().parents[1] / "datasets/demo/pool.jsonl")
    sampler, config = PairSampler(pool, seed=0), AppConfig(admin_without_login=True)
    with gr.Blocks():
        sc = _layout(config)
    plain = simulate(tmp_path, prompts=30, judges=())
    for store, shown in ((ComparisonStore(store_dir), True), (ComparisonStore(plain), False)):
        upd = Handlers(config, store, sampler, make_service(config, store, sampler), sc).on_dashboard(None)
        assert upd[sc.judges]["visible"] is shown and upd[sc.judges_plot]["visible"] is shown
        assert "Annotator reliability" in upd[sc.reliability] and upd[sc.plots["reliability"]] is not None
        store.close()


def test_dataset_card_shows_them_under_pseudonyms(tmp_path, monkeypatch):
    """`push --dry-run`: the card carries reliability and the judge card, computed on pseudonymised votes: humans
    as annotator-NN, judges as judge:model-NN (a judge's id may be a local path), no login id anywhere."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store = simulate(tmp_path, prompts=40)
    out = tmp_path / "card"
    assert annotate_main(["push", "--store", str(store), "--repo-id", "me/prefs", "--dry-run", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "### Annotator reliability (Dawid-Skene)" in card and "### Judge bias card" in card
    assert "| judge:model-01 |" in card and "| annotator-05 |" in card
    assert "judge:model-02 is flagged for position bias" in card  # judge:left, second of the sorted judge ids
    for name in ("good1", "flipper", "judge:left", "judge:long", "alert(1)"):
        assert name not in card, name
    assert math.isfinite(float(card.split("annotators flagged unreliable (Dawid-Skene) | ")[1].split(" |")[0]))
