"""Preferred vs verified (annotate.audit_correct): the audit recovers a planted preference for wrong answers, written
through a real store and pool, and shows it in the report, the Dashboard and the dataset card.

Simulation (seeded): 180 checkable prompts (150 sums with a numeric verifier, 30 code names with an exact one),
each with four candidates: right-short ("391"), right-long (a worked sum ending "so the answer is 391"), wrong-
confident ("17 + 23 = 381.": longer than right-short, shorter than right-long, no hedging) and wrong-hedged ("I think
it is probably 401, but I am not sure."). Of the six pairs, four have exactly one right answer, one of each kind:
wrong longer or not x wrong confident or hedged. Two annotators judge each of those four pairs once per prompt
(sides and left/right shuffled):
- swayed prefers the wrong answer with probability PLANTED[(length, tone)]: 0.55 longer and confident, 0.30
  longer and hedged, 0.35 not longer and confident, 0.10 not longer and hedged;
- careful prefers it with probability 0.05 whatever it looks like.
Noise the figure must leave out: votes on the both-right and both-wrong pairs, ties, honeypots, an undone vote and
votes on prompts without a verifier. The counts must equal a direct count of the simulation; the planted rates
must lie inside the audit's own Wilson 95% intervals (six such checks: with another seed one could miss by
design, about 1 time in 4 all told).
"""

from __future__ import annotations

import itertools
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from annotate.__main__ import main as annotate_main
from annotate.audit import run_audit
from annotate.audit_correct import SPLITS, verdicts
from annotate.audit_report import findings, make_figures, read_json, render_html
from annotate.cards import _audit_section
from annotate.importers import import_pool
from annotate.pool import pool_verifiers, read_pool, write_pool
from annotate.sampler import PairSampler
from annotate.schema import new_comparison
from annotate.session import dashboard_view
from annotate.store import ComparisonStore, read_table

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "datasets/demo/pool.jsonl"
PLANTED = {("longer", "confident"): 0.55, ("longer", "hedged"): 0.30,
           ("not_longer", "confident"): 0.35, ("not_longer", "hedged"): 0.10}  # fmt: skip
CAREFUL = 0.05
# candidate kinds of a one-right pair -> (the wrong one's length vs the right one, its tone)
CELL = {("rs", "wc"): ("longer", "confident"), ("rs", "wh"): ("longer", "hedged"),
        ("rl", "wc"): ("not_longer", "confident"), ("rl", "wh"): ("not_longer", "hedged")}  # fmt: skip
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _candidates(i: int) -> tuple[list[dict], dict]:
    """(messages, {kind: text}, verifier spec) of checkable prompt i."""
    if i % 6 == 5:  # an exact verifier
        prompt = f"What is the code name of project {i}?"
        texts = {"rs": f"Falcon-{i}.", "wc": f"It is called Osprey-{i}.",
                 "wh": f"I think it might be Osprey-{i}, but I am not sure.",
                 "rl": f"Project {i} went through several names while it was planned; the one it kept, printed on "
                       f"every badge and in every report since, is this one:\nFalcon-{i}"}  # fmt: skip
        return [{"role": "user", "content": prompt}], texts, {"type": "exact", "answer": f"Falcon-{i}"}
    a, b = 11 + (7 * i) % 80, 12 + (13 * i) % 85
    s = a + b
    tens, ones = (a - a % 10, b - b % 10), (a % 10, b % 10)
    texts = {
        "rs": str(s),
        "wc": f"{a} + {b} = {s + 10}.",
        "wh": f"I think it is probably {s - 10}, but I am not sure.",
        "rl": f"Add the tens first: {tens[0]} + {tens[1]} = {sum(tens)}. Then the ones: {ones[0]} + {ones[1]} = "
        f"{sum(ones)}. Together that makes the total, so the answer is {s}.",
    }
    return [{"role": "user", "content": f"What is {a} + {b}?"}], texts, {"type": "numeric", "answer": s}


def _vote(pid, prompt, x, y, choice, who, k, **kw) -> dict:
    """A vote on candidates x, y = (response_id, text), shown as a/b in that order."""
    return new_comparison(prompt_id=pid, prompt=prompt, response_a_id=x[0], response_a=x[1], response_b_id=y[0],
                          response_b=y[1], choice=choice, annotator=who, source_a="m", source_b="m",
                          created_at=T0 + timedelta(seconds=k), **kw)  # fmt: skip


def simulate(root: Path, prompts: int = 180, seed: int = 0) -> tuple[Path, Path, dict]:
    """Write the pool and the store; returns (store, pool, expected) with expected[(who, split)] = [k, n] counted
    straight from the simulated choices, and the noise counts under expected["excluded"]."""
    rng = np.random.default_rng(seed)
    pool_rows, records = [], []
    tally = {(who, s): [0, 0] for who in ("swayed", "careful", "all") for s in ("overall", *SPLITS)}
    excluded = {"both_pass": 0, "both_fail": 0, "not_decisive": 0}

    def add(rec: dict) -> None:
        records.append(rec)

    for i in range(prompts):
        pid = f"c{i}"
        prompt, texts, spec = _candidates(i)
        cand = {kind: (f"{pid}-{kind}", text) for kind, text in texts.items()}
        for kind, (rid, text) in cand.items():
            pool_rows.append(dict(prompt_id=pid, prompt=prompt, response_id=rid, response=text, source="m",
                                  meta=json.dumps({"verifier": spec, "kind": kind})))  # fmt: skip
        for who, (kinds, cell) in itertools.product(("swayed", "careful"), CELL.items()):
            right, wrong = cand[kinds[0]], cand[kinds[1]]
            p = PLANTED[cell] if who == "swayed" else CAREFUL
            wrong_wins = bool(rng.random() < p)
            x, y = (right, wrong) if rng.random() < 0.5 else (wrong, right)
            choice = "a" if (x == wrong) == wrong_wins else "b"
            add(_vote(pid, prompt, x, y, choice, who, len(records), left=str(rng.choice(["a", "b"]))))
            for name in (who, "all"):
                for split in ("overall", cell[0], cell[1], f"{cell[0]}_{cell[1]}"):
                    tally[(name, split)][0] += wrong_wins
                    tally[(name, split)][1] += 1
        # Noise: both right, both wrong, a tie on a one-right pair, sometimes a honeypot.
        add(_vote(pid, prompt, cand["rs"], cand["rl"], "a", "careful", len(records)))
        add(_vote(pid, prompt, cand["wc"], cand["wh"], "b", "swayed", len(records)))
        add(_vote(pid, prompt, cand["rs"], cand["wc"], "tie", "swayed", len(records)))
        excluded["both_pass"] += 1
        excluded["both_fail"] += 1
        excluded["not_decisive"] += 1
        if i % 20 == 0:
            add(_vote(pid, prompt, cand["wc"], cand["wc"], "a", "careful", len(records)))
            excluded["both_fail"] += 1  # one text twice: one verdict
    for j in range(10):  # prompts without a verifier: not checkable at all
        prompt = [{"role": "user", "content": f"Tell me a story about {j}."}]
        short, long_ = (f"p{j}-s", "Once."), (f"p{j}-l", "Once upon a time there was a long story.")
        for rid, text in (short, long_):
            pool_rows.append(dict(prompt_id=f"p{j}", prompt=prompt, response_id=rid, response=text, source="m",
                                  meta="{}"))  # fmt: skip
        add(_vote(f"p{j}", prompt, short, long_, "b", "swayed", len(records)))
    pool = write_pool(pool_rows, root / "pool.jsonl")
    store = ComparisonStore(root / "store")
    store.write_batch(records)
    # An undone vote (a wrong-preferred vote and its retraction) must not count anywhere.
    undone = dict(records[0], comparison_id="undone-1", choice="a" if records[0]["choice"] == "b" else "b")
    store.append(undone)
    store.append(dict(undone, comparison_id="undo-1", retracts="undone-1"))
    store.close()
    return root / "store", pool, {**tally, "excluded": excluded, "checkable": len(records) - 10}


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("verified")
    store, pool, expected = simulate(root)
    audit = run_audit(read_table(str(store)), verifiers=pool_verifiers(read_pool(pool)), n_boot=50)
    return store, pool, expected, audit


def _inside(value: float, ci: tuple[float, float]) -> bool:
    return ci[0] <= value <= ci[1]


def test_planted_preference_for_wrong_answers_is_recovered(sim):
    _, _, expected, audit = sim
    p = audit.preferred_vs_verified
    # Exactly the votes between a right and a wrong answer count, each in the splits its wrong answer falls in.
    for who, picks in (("swayed", p.per_annotator["swayed"]), ("careful", p.per_annotator["careful"]),
                       ("all", p.overall)):  # fmt: skip
        assert [picks.overall.k, picks.overall.n] == expected[(who, "overall")], who
        for split in SPLITS:
            assert [picks.splits[split].k, picks.splits[split].n] == expected[(who, split)], (who, split)
    assert set(p.per_annotator) == {"swayed", "careful"} and p.prompts == 180
    assert p.excluded == expected["excluded"] and p.checkable_votes == expected["checkable"]
    # The planted rates lie inside the audit's 95% intervals.
    swayed = p.per_annotator["swayed"].splits
    for (length, tone), rate in PLANTED.items():
        assert _inside(rate, swayed[f"{length}_{tone}"].ci), (length, tone, swayed[f"{length}_{tone}"])
    careful = p.per_annotator["careful"].overall
    assert _inside(CAREFUL, careful.ci), careful
    pooled = (np.mean(list(PLANTED.values())) + CAREFUL) / 2  # every cell is judged equally often by both
    assert _inside(pooled, p.overall.overall.ci), p.overall.overall
    # ... and tell the biases apart: longer and confident wrong answers win more often, the careful annotator rarely.
    assert swayed["longer"].ci[0] > swayed["not_longer"].ci[1]
    assert swayed["confident"].ci[0] > swayed["hedged"].ci[1]
    assert careful.ci[1] < p.per_annotator["swayed"].overall.ci[0]


def test_report_and_json_show_it(sim, tmp_path, capsys):
    """The CLI finds the verifiers in the store's pool folder (where imports keep them) and writes the figure to
    the JSON (as the library computes it, read back typed), the findings and the HTML report."""
    store, pool, _, audit = sim
    import_pool(pool, store)
    out_json, out_html = tmp_path / "audit.json", tmp_path / "audit.html"
    rc = annotate_main(["audit", "--store", str(store), "--json", str(out_json), "--report", str(out_html),
                        "--n-boot", "50"])  # fmt: skip
    assert rc == 0
    data = json.loads(out_json.read_text())
    assert data["preferred_vs_verified"] == audit.to_dict()["preferred_vs_verified"]
    assert read_json(out_json).preferred_vs_verified == audit.preferred_vs_verified
    o = audit.preferred_vs_verified.overall.overall
    sentence = f"annotators preferred the wrong one {100 * o.rate:.0f}% of the time"
    assert sentence in capsys.readouterr().out
    assert any(sentence in s for s in findings(audit))
    page = out_html.read_text()
    assert "Preferred vs verified (checkable prompts)" in page and "wrong one hedged" in page
    assert "<td>swayed</td>" in page
    assert "verified" in make_figures(audit) and make_figures(audit)["verified"].axes


def test_no_checkable_items_no_figure(sim, tmp_path):
    """Without verifiers, or with verifiers for prompts nobody voted on, the figure is absent everywhere."""
    store, pool, _, _ = sim
    table = read_table(str(store))
    unrelated = {"nobody-voted": {"type": "exact", "answer": "x"}}
    for verifiers in (None, {}, unrelated):
        audit = run_audit(table, n_boot=20, verifiers=verifiers)
        assert audit.preferred_vs_verified is None
        assert "preferred_vs_verified" not in audit.to_dict()
        assert "Preferred vs verified" not in render_html(audit) and "verifier" not in " ".join(findings(audit))
        assert "verified" not in make_figures(audit)
        assert "Preferred vs verified" not in _audit_section(audit, "")
    view = dashboard_view(ComparisonStore(store), {}, None)
    assert view["verified"] == "" and "verified" not in view["figures"]


def test_dataset_card_shows_it_under_pseudonyms(tmp_path, monkeypatch):
    """`push --dry-run`: the card's audit reads the verifiers kept in the store and names annotators as the card
    does (pseudonyms), never by their login ids."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    store, pool, expected = simulate(tmp_path, prompts=24)
    import_pool(pool, store)
    out = tmp_path / "card"
    assert annotate_main(["push", "--store", str(store), "--repo-id", "me/prefs", "--dry-run", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "### Preferred vs verified (checkable prompts)" in card
    k, n = expected[("all", "overall")]
    assert f"annotators preferred the wrong one {100 * k / n:.0f}% of the time" in card
    assert "| annotator-01 |" in card and "| annotator-02 |" in card
    assert "swayed" not in card and "careful" not in card


def test_dashboard_on_the_demo_pool(tmp_path):
    """The app's Dashboard reads the served pool's verifiers (the sampler keeps them), python ones included, and
    shows the figure through the one rendering path: an annotator name is text, never markup."""
    pool = read_pool(DEMO)
    sampler = PairSampler(pool, seed=0)
    assert sampler.verifiers == pool_verifiers(pool) and len(sampler.verifiers) == 40
    rows = [r for r in pool.to_pylist() if r["prompt_id"] in sampler.verifiers]
    meta = {r["response_id"]: json.loads(r["meta"]) for r in rows}
    # The audit's verdicts agree with what the demo pool says about every checkable candidate.
    ok_a, _ = verdicts([r["prompt_id"] for r in rows], [r["response"] for r in rows], [""] * len(rows),
                       sampler.verifiers)  # fmt: skip
    assert [bool(x) for x in ok_a] == [meta[r["response_id"]]["correct"] for r in rows]
    records, hostile = [], '<img src=x onerror="alert(1)">'
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    for pid, cands in by_prompt.items():
        for x, y in itertools.combinations(cands, 2):
            if meta[x["response_id"]]["correct"] == meta[y["response_id"]]["correct"]:
                continue
            wrong = "a" if not meta[x["response_id"]]["correct"] else "b"
            for who in ("ann", hostile):  # ann always prefers the wrong one, the other never
                choice = wrong if who == "ann" else {"a": "b", "b": "a"}[wrong]
                records.append(_vote(pid, x["prompt"], (x["response_id"], x["response"]),
                                     (y["response_id"], y["response"]), choice, who, len(records)))  # fmt: skip
    ComparisonStore(tmp_path / "s").write_batch(records)
    view = dashboard_view(ComparisonStore(tmp_path / "s"), sampler.gold, sampler.verifiers)
    html = view["verified"]
    assert "Preferred vs verified" in html and "<img" not in html and "&lt;img" in html
    assert "<td>100% (" in html and "<td>0% (" in html and "n=160" in html  # 40 prompts x 4 right-vs-wrong pairs
    assert "verified" in view["figures"] and "preferred the wrong one 50% of the time" in view["findings"]
    assert math.isfinite(view["figures"]["verified"].axes[0].get_ylim()[1])


def test_dashboard_tab_shows_it_only_when_there_is_something_to_show(sim, tmp_path):
    """The Dashboard handler passes the served pool's verifiers on and shows the table and plot only with a figure."""
    gr = pytest.importorskip("gradio")
    from annotate.ui import AppConfig, Handlers, _layout, make_service

    store_dir, pool, _, _ = sim
    sampler, config = PairSampler(read_pool(pool), seed=0), AppConfig(admin_without_login=True)
    with gr.Blocks():
        sc = _layout(config)
    for store, shown in ((ComparisonStore(store_dir), True), (ComparisonStore(tmp_path / "empty"), False)):
        upd = Handlers(config, store, sampler, make_service(config, store, sampler), sc).on_dashboard(None)
        assert upd[sc.verified]["visible"] is shown and upd[sc.verified_plot]["visible"] is shown
        assert ("<td>swayed</td>" in upd[sc.verified]["value"]) is shown
        store.close()
