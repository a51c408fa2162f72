"""annotate/reliability.py: the Dawid-Skene fit recovers simulated annotators (ranking, CIs, position habits), its
aggregate beats the majority on the known truth, it equals crowd-kit's EM, and aggregate() keeps its contract."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from annotate.reliability import aggregate, decisive_votes, fit_dawid_skene
from annotate.schema import comparisons_table, new_comparison

# An annotator maps (uniform draws, lo is better, lo is longer, lo shown left) per vote to "picks lo".
Kind = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def accurate(acc: float) -> Kind:
    return lambda u, better, longer, left: np.where(u < acc, better, ~better)


def picks_longer(u, better, longer, left):
    return longer


def picks_left(u, better, longer, left):
    return left


def half_lazy_left(u, better, longer, left):  # half the time clicks left unread, else right
    return np.where(u < 0.5, left, better)


TRUE = {"good1": 0.9, "good2": 0.88, "good3": 0.85, "good4": 0.85, "rand1": 0.5, "rand2": 0.5, "flipper": 0.15}
CROWD: dict[str, Kind] = {**{name: accurate(acc) for name, acc in TRUE.items()}, "longer": picks_longer}
GOOD, RANDOM = ["good1", "good2", "good3", "good4"], ["rand1", "rand2"]


def simulate(
    seed: int, crowd: dict[str, Kind] = CROWD, n_pairs: int = 600, per_pair: int = 5, longer_better: float = 0.65,
    imported: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Votes (per_pair distinct annotators per pair, sides and placement at random) and the truth per pair; in
    `longer_better` of the pairs the better response is the longer one."""
    rng = np.random.default_rng(seed)
    names = list(crowd)
    lo_better = rng.random(n_pairs) < 0.5
    lo_longer = lo_better == (rng.random(n_pairs) < longer_better)
    pair = np.repeat(np.arange(n_pairs), per_pair)
    who = np.argsort(rng.random((n_pairs, len(names))), axis=1)[:, :per_pair].ravel()
    a_is_lo, a_left, u = (rng.random(len(pair)) < 0.5), (rng.random(len(pair)) < 0.5), rng.random(len(pair))
    pick_lo = np.zeros(len(pair), dtype=bool)
    for k, name in enumerate(names):
        m = who == k
        pick_lo[m] = crowd[name](u[m], lo_better[pair[m]], lo_longer[pair[m]], a_left[m] == a_is_lo[m])
    lo = np.char.add(np.char.add("r", pair.astype(str)), "-x")
    hi = np.char.add(np.char.add("r", pair.astype(str)), "-y")
    votes = pd.DataFrame(
        {
            "prompt_id": np.char.add("p", pair.astype(str)),
            "response_a_id": np.where(a_is_lo, lo, hi),
            "response_b_id": np.where(a_is_lo, hi, lo),
            "annotator": np.array(names)[who],
            "choice": np.where(pick_lo == a_is_lo, "a", "b"),
            "left": np.where(a_left, "a", "b"),
            "session": "import:sim" if imported else "s1",
        }
    )
    ids = np.arange(n_pairs).astype(str)
    truth = pd.DataFrame(
        {
            "prompt_id": np.char.add("p", ids),
            "better_id": np.char.add(np.char.add("r", ids), np.where(lo_better, "-x", "-y")),
            "longer_is_better": lo_longer == lo_better,
        }
    )
    return votes, truth


def true_reliability(votes: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """The simulated accuracies; for "longer", its realised accuracy: the share of its pairs where longer is better
    (the model sees only votes, so a length habit is indistinguishable from that much skill)."""
    out = dict(TRUE)
    mine = votes.loc[votes["annotator"] == "longer", ["prompt_id"]].merge(truth, on="prompt_id")
    out["longer"] = float(mine["longer_is_better"].mean())
    return out


def accuracy(rows: pd.DataFrame, truth: pd.DataFrame) -> float:
    """Share of pairs whose chosen response is the better one; a pair without preference counts half."""
    m = rows.merge(truth, on="prompt_id")
    return float(np.where(m["weight"] == 0, 0.5, m["chosen_id"] == m["better_id"]).mean())


@pytest.mark.parametrize("longer_better", [0.65, 0.5])
def test_reliability_ranks_the_simulated_annotators(longer_better):
    votes, truth = simulate(0, longer_better=longer_better)
    fit = fit_dawid_skene(votes)
    r, true = fit.annotators["reliability"], true_reliability(votes, truth)
    assert fit.converged and (fit.annotators["votes"] > 300).all()
    assert r[GOOD].min() > max(r["longer"], r[RANDOM].max()) and r[RANDOM].min() > r["flipper"]
    if longer_better > 0.6:
        assert r["longer"] > r[RANDOM].max() + 0.05
    for name in GOOD + RANDOM + ["flipper"]:
        assert abs(r[name] - true[name]) < 0.07, name
    # Honest about "longer": its estimate is its realised accuracy (about 0.65 or 0.5 here), i.e. it reads as a
    # moderately skilled or a random annotator; telling a length habit from skill is the audit's length-bias job.
    assert abs(r["longer"] - true["longer"]) < 0.06
    assert r["flipper"] < 0.25 and abs(r[RANDOM] - 0.5).max() < 0.06


def test_intervals_cover_the_true_reliabilities():
    # 95% Wilson intervals, conditional on the fitted truth: over 10 simulations x 8 annotators (~370 votes each)
    # they cover the simulated values at close to the nominal rate: 74/80 here, 147/160 over 20 seeds. A little
    # under 95% because the interval leaves out the uncertainty of the fitted truth (see the module docstring).
    covered = []
    for seed in range(10):
        votes, truth = simulate(seed)
        a = fit_dawid_skene(votes).annotators
        for name, true in true_reliability(votes, truth).items():
            covered.append(a.loc[name, "ci_low"] <= true <= a.loc[name, "ci_high"])
    assert np.mean(covered) >= 0.88


def test_dawid_skene_beats_the_majority_on_the_truth():
    for seed in range(3):
        votes, truth = simulate(seed)
        acc = {m: accuracy(aggregate(votes, m), truth) for m in ("majority", "weighted", "dawid-skene")}
        assert acc["dawid-skene"] > acc["majority"] + 0.1, acc  # measured: 0.94-0.96 vs 0.76-0.81
        assert acc["weighted"] > acc["majority"] + 0.1, acc
        # Soft labels are calibrated: the mean p_chosen is the share actually right.
        ds = aggregate(votes, "dawid-skene")
        assert abs(ds["p_chosen"].mean() - acc["dawid-skene"]) < 0.03


def test_position_habits_are_modelled_in_screen_sides():
    crowd = {**{n: CROWD[n] for n in GOOD}, "lefty": half_lazy_left, "always_left": picks_left}
    votes, truth = simulate(1, crowd, n_pairs=800, per_pair=4)
    a = fit_dawid_skene(votes).annotators
    # Half-lazy: right whenever the better response is on the left, half the time when it is on the right.
    assert a.loc["lefty", "acc_better_left"] > 0.95 and abs(a.loc["lefty", "acc_better_right"] - 0.5) < 0.07
    assert abs(a.loc["lefty", "reliability"] - 0.75) < 0.05
    # Always left: as right as chance, and its votes carry no evidence either way.
    assert abs(a.loc["always_left", "reliability"] - 0.5) < 0.05
    assert a.loc["always_left", "acc_better_left"] > 0.95 > 0.05 > a.loc["always_left", "acc_better_right"]
    without = votes[votes["annotator"] != "always_left"]
    p = aggregate(votes).set_index("prompt_id")["p_chosen"]
    q = aggregate(without).set_index("prompt_id")["p_chosen"].reindex(p.index)
    assert np.nanmax(np.abs(p - q)) < 0.05
    assert accuracy(aggregate(votes), truth) > 0.95


def test_matches_crowdkit_on_the_same_votes():
    # Both run the same EM map from the same majority start (E step, class prior, M step), so with our prior off
    # and the class prior learned, K iterations of each agree to rounding. A fixed K rather than convergence:
    # crowd-kit stops when its ELBO dips (it did, by 2e-6, after 5 steps here) and is ~50 ms an iteration.
    crowdkit = pytest.importorskip("crowdkit.aggregation")
    for imported in (False, True):
        votes, _ = simulate(1, n_pairs=200, imported=imported)
        # The screen frame is crowd-kit's id frame when lo is always shown left; imports use the one-coin channel.
        votes["left"] = np.where(votes["response_a_id"] < votes["response_b_id"], "a", "b")
        ours = fit_dawid_skene(votes, prior=(0.0, 0.0), class_prior=None, tol=0.0, max_iter=15)
        d = decisive_votes(votes)
        data = pd.DataFrame(
            {"task": d["pair"], "worker": d["annotator"], "label": np.where(d["picked_lo"], "lo", "hi")}
        )
        model = (crowdkit.OneCoinDawidSkene if imported else crowdkit.DawidSkene)(n_iter=15, tol=-np.inf)
        p_lo = model.fit_predict_proba(data)["lo"].reindex(ours.pairs.index).to_numpy()
        np.testing.assert_allclose(ours.pairs["p_lo"], p_lo, atol=1e-8)
        names = ours.annotators.index
        if imported:
            np.testing.assert_allclose(ours.annotators["reliability"], model.skills_[names], atol=1e-8)
        else:
            for col, side in (("acc_better_left", "lo"), ("acc_better_right", "hi")):
                theirs = [model.errors_.loc[(w, side), side] for w in names]
                np.testing.assert_allclose(ours.annotators[col], theirs, atol=1e-8)
        assert ours.class_prior == pytest.approx(model.priors_["lo"], abs=1e-8)


def vote(i: int, x: str, y: str, choice: str, who: str, **kw) -> dict:
    return new_comparison(prompt_id=f"p{i}", prompt=[{"role": "user", "content": f"q{i}"}], response_a_id=x,
                          response_a=f"text {x}", response_b_id=y, response_b=f"text {y}", choice=choice,
                          annotator=who, created_at=datetime(2025, 1, 1, tzinfo=UTC), **kw)  # fmt: skip


def test_aggregate_contract_on_a_store_table():
    recs = [
        vote(1, "b", "a", "a", "u1", strength=3),  # u1 prefers b ("much")
        vote(1, "a", "b", "a", "u2", strength=1, left="b"),
        vote(1, "a", "b", "a", "u3", strength=1),  # two slight votes for a lose to one "much" for b
        vote(2, "c", "d", "tie", "u1"),
        vote(2, "c", "d", "both_bad", "u2"),
        vote(2, "c", "d", "skip", "u3"),
        vote(3, "e", "e", "a", "u1"),  # honeypot
        vote(4, "f", "g", "b", "u1", comparison_id="gone"),
        vote(4, "f", "g", "skip", "u1", retracts="gone"),
        vote(5, "h", "i", "b", "u2", session="import:hh:x.jsonl"),
    ]
    table = comparisons_table(recs)
    for method in ("majority", "weighted", "dawid-skene"):
        out = aggregate(table, method)
        assert list(out.columns) == ["prompt_id", "chosen_id", "rejected_id", "p_chosen", "weight", "n_votes"]
        assert out["prompt_id"].tolist() == ["p1", "p5"]  # pairs in order of first vote; nothing else usable
        assert out["n_votes"].tolist() == [3, 1] and (out["p_chosen"] >= 0.5).all()
        np.testing.assert_allclose(out["weight"], 2 * out["p_chosen"] - 1)
        assert out.loc[1, ["chosen_id", "rejected_id"]].tolist() == ["i", "h"]
    major = aggregate(table, "majority")
    assert major.loc[0, ["chosen_id", "rejected_id"]].tolist() == ["b", "a"]
    assert major.loc[0, "p_chosen"] == pytest.approx(3 / 5) and major.loc[1, "p_chosen"] == 1.0
    v = decisive_votes(table)
    assert v["placed"].tolist() == [True, True, True, False]
    assert aggregate(table.to_pandas(), "dawid-skene").equals(aggregate(table, "dawid-skene"))
    with pytest.raises(ValueError, match="method must be one of"):
        aggregate(table, "mean")
    empty = aggregate(table.slice(3, 3))
    assert len(empty) == 0 and "p_chosen" in empty.columns


def test_few_votes_are_shrunk_not_trusted_blindly():
    votes, _ = simulate(2, n_pairs=300)
    few = votes[votes["annotator"] == "good1"].head(2).assign(annotator="newcomer")
    a = fit_dawid_skene(pd.concat([votes, few])).annotators.loc["newcomer"]
    assert a["votes"] == 2 and 0.6 < a["reliability"] < 0.9  # two right votes: not accuracy 1, no infinite weight
    assert a["ci_high"] - a["ci_low"] > 0.5
    mle = fit_dawid_skene(pd.concat([votes, few]), prior=(0.0, 0.0)).annotators.loc["newcomer", "reliability"]
    assert mle > 0.99  # what the prior prevents


def test_fit_is_deterministic_and_order_free():
    votes, _ = simulate(3, n_pairs=200)
    a, b = aggregate(votes), aggregate(votes)
    assert a.equals(b)
    shuffled = aggregate(votes.sample(frac=1.0, random_state=0)).set_index("prompt_id").loc[a["prompt_id"]]
    np.testing.assert_allclose(shuffled["p_chosen"], a["p_chosen"], atol=1e-6)
    assert (shuffled["chosen_id"].to_numpy() == a["chosen_id"].to_numpy()).all()
