"""ActiveStrategy: most uncertain pairs first, no repeats per annotator, disagreement re-serves, app.py serves it."""

import json
import math
import subprocess
import sys

import pytest

from annotate.active import ActiveStrategy, disagreement
from annotate.sampler import PairSampler
from annotate.schema import new_comparison, pool_table
from annotate.store import read_table
from rlhf.reward import active_strategy, score_pool


def make_pool(n_prompts: int, texts: list[str]):
    rows = [
        {"prompt_id": f"p{p}", "prompt": [{"role": "user", "content": f"What is {p} + {p} ?"}],
         "response_id": f"r{r}", "response": t, "source": f"m{r}", "meta": "{}"}
        for p in range(n_prompts) for r, t in enumerate(texts)
    ]  # fmt: skip
    return pool_table(rows)


def spread_scores(pool) -> dict:
    """Distinct rewards, so every pair has its own gap: prompt p, response r -> p + 0.37 * r^2 (p scaled down)."""
    return {(r["prompt_id"], r["response_id"]): 0.1 * int(r["prompt_id"][1:]) * int(r["response_id"][1:]) ** 2
            + 0.37 * int(r["response_id"][1:]) for r in pool.to_pylist()}  # fmt: skip


def gap(scores, pair) -> float:
    return abs(scores[(pair.prompt_id, pair.a.response_id)] - scores[(pair.prompt_id, pair.b.response_id)])


def rm_side(scores, pair) -> str:
    """The canonical side the reward model prefers."""
    return "a" if scores[(pair.prompt_id, pair.a.response_id)] >= scores[(pair.prompt_id, pair.b.response_id)] else "b"


def pair_gap(scores, sampler, i: int) -> float:
    pid, a, b, _ = sampler.pairs[i]
    return abs(scores[(pid, a.response_id)] - scores[(pid, b.response_id)])


def vote(pair, annotator: str, side: str) -> dict:
    """A vote for canonical side `side` ("a"/"b"/"tie"), recorded with the sides as shown."""
    return new_comparison(
        prompt_id=pair.prompt_id, prompt=pair.prompt, response_a_id=pair.a.response_id, response_a=pair.a.text,
        response_b_id=pair.b.response_id, response_b=pair.b.text, left=pair.left, choice=side, annotator=annotator,
    )  # fmt: skip


def test_most_uncertain_first_and_no_repeats():
    pool = make_pool(6, ["x", "y", "z", "w"])  # 6 * C(4,2) = 36 pairs
    scores = spread_scores(pool)
    sampler = PairSampler(pool, strategy=ActiveStrategy(scores), overlap=2, seed=0)
    served = {ann: [] for ann in ("u1", "u2", "u3")}
    while True:
        progressed = False
        for ann, mine in served.items():
            if (pair := sampler.next_pair(ann)) is not None:
                mine.append(pair)
                # Votes agree with the reward model (higher reward wins): no disagreement re-ranks anything.
                sa, sb = (scores[(pair.prompt_id, c.response_id)] for c in (pair.a, pair.b))
                sampler.record(vote(pair, ann, "a" if sa >= sb else "b"))
                progressed = True
        if not progressed:
            break
    for mine in served.values():
        assert len({p.index for p in mine}) == len(mine)  # never the same pair twice to one annotator
    assert sampler.judgments() == [2] * 36  # overlap honoured: every pair judged by exactly 2 annotators
    gaps = [round(gap(scores, p), 9) for p in served["u1"]]
    smallest = sorted(pair_gap(scores, sampler, i) for i in range(36))
    assert gaps[0] == pytest.approx(smallest[0])  # the least certain pair of the pool comes first
    # One annotator's sequence never goes from a large gap back to a much smaller one (others take pairs, but
    # each serve is the most uncertain still open).
    assert gaps == sorted(gaps)


def test_disagreement_is_served_before_fresh_uncertain_pairs():
    pool = make_pool(4, ["x", "y", "z"])
    scores = spread_scores(pool)
    strategy = ActiveStrategy(scores)
    sampler = PairSampler(pool, strategy=strategy, overlap=3, seed=1)
    confident = max(range(len(sampler.pairs)), key=lambda i: pair_gap(scores, sampler, i))  # the model's surest
    pair = sampler.next_pair("early")
    while pair.index != confident:  # walk "early" down the ranking (agreeing with the model) to the confident pair
        sampler.record(vote(pair, "early", rm_side(scores, pair)))
        pair = sampler.next_pair("early")
    prefers = rm_side(scores, pair)
    # A vote with the reward model does not promote the pair ...
    sampler.record(vote(pair, "early", prefers))
    assert sampler.next_pair("late").index != confident
    # ... a vote against it (the model ranks this pair wrong) puts it first for everyone who has not judged it.
    sampler.record(vote(pair, "early2", "b" if prefers == "a" else "a"))
    assert sampler.tally(confident)[prefers] == 1
    assert sampler.next_pair("late2").index == confident
    assert strategy.priority(sampler, confident) > 1.0  # u < 1 plus a split 1-1 (d = 1)
    assert disagreement({"a": 1, "b": 1, "tie": 0}, "a") == 1.0
    assert disagreement({"a": 2, "b": 0, "tie": 0}, "a") == 0.0
    assert disagreement({"a": 0, "b": 2, "tie": 0}, "a") == 1.0
    assert disagreement({}, "a") == 0.0


def test_update_scores_reranks_and_active_needs_scores():
    pool = make_pool(3, ["x", "y"])
    scores = {k: 0.0 for k in spread_scores(pool)}
    scores[("p2", "r1")] = 5.0  # p0 and p1 tie at gap 0; p2 is certain
    strategy = ActiveStrategy(scores)
    sampler = PairSampler(pool, strategy=strategy, seed=0)
    assert sampler.next_pair("u").prompt_id in ("p0", "p1")
    strategy.update_scores({**scores, ("p0", "r1"): 9.0, ("p1", "r1"): 9.0, ("p2", "r1"): 0.0})
    assert strategy.version == 1
    assert sampler.next_pair("v").prompt_id == "p2"  # now the only uncertain pair
    with pytest.raises(ValueError, match="needs reward-model scores"):
        PairSampler(pool, strategy="active")
    with pytest.raises(ValueError, match="no reward score"):
        PairSampler(pool, strategy=ActiveStrategy({("p0", "r0"): 1.0})).next_pair("u")


@pytest.fixture(scope="module")
def toy_rm(tmp_path_factory):
    from toy_reward import save_token_reward_model, tiny_tokenizer

    return save_token_reward_model(tmp_path_factory.mktemp("rm") / "rm", tiny_tokenizer())


def test_score_pool_with_a_real_reward_model(toy_rm):
    from rlhf.models import load_tokenizer
    from rlhf.reward import load_reward_model, score

    pool = make_pool(3, ["7", "the answer is 7", "is 7 7 7"])
    scores = score_pool(pool, toy_rm, batch_size=2, chunk=4)
    tok = load_tokenizer(toy_rm)
    direct = score(
        load_reward_model(toy_rm, tok), tok, [[{"role": "user", "content": "What is 1 + 1 ?"}]], ["is 7 7 7"]
    )
    assert scores[("p1", "r2")] == pytest.approx(direct[0], abs=1e-5)
    assert scores[("p0", "r2")] > scores[("p0", "r0")] > scores[("p0", "r1")]  # more digits, more reward
    strategy = active_strategy(pool, toy_rm)
    strategy.refresh()
    assert strategy.version == 1


@pytest.mark.slow
def test_app_serves_active_pairs(toy_rm, tmp_path):
    gradio_client = pytest.importorskip("gradio_client")
    from apphelpers import ROOT, Server

    pool_path = tmp_path / "pool.jsonl"
    texts = ["7", "the answer is 7", "is 7 7 7", "the 7 7"]
    pool = make_pool(4, texts)
    pool_path.write_text("".join(json.dumps(r) + "\n" for r in pool.to_pylist()))
    for bad in (["--strategy", "active"], ["--reward-model", toy_rm]):  # one without the other: exit 2
        cmd = [sys.executable, str(ROOT / "app.py"), "--pool", str(pool_path), "--store", str(tmp_path / "x"), *bad]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "--reward-model DIR go together" in done.stderr
    scores = score_pool(pool, toy_rm)
    with Server(pool_path, tmp_path / "votes", "--strategy", "active", "--reward-model", toy_rm) as server:
        c = gradio_client.Client(server.url, verbose=False, download_files=False)
        token = c.predict(name="ann", api_name="/next_pair")[5]
        c.predict(choice="a", name="ann", token=token, api_name="/vote")
    rec = read_table(str(tmp_path / "votes")).to_pylist()[0]
    served = abs(scores[(rec["prompt_id"], rec["response_a_id"])] - scores[(rec["prompt_id"], rec["response_b_id"])])
    all_gaps = [abs(scores[(f"p{p}", f"r{i}")] - scores[(f"p{p}", f"r{j}")])
                for p in range(4) for i in range(4) for j in range(i + 1, 4)]  # fmt: skip
    assert served == pytest.approx(min(all_gaps), abs=1e-6)
    assert not math.isnan(served)
