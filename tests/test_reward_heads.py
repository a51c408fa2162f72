"""rlhf/reward_heads.py (and its trainer): a head per criterion on one body, and the objective that weighs them
wherever a reward model scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from fixtures import arithmetic_tokenizer, save_tiny_model  # noqa: E402
from toy_reward import save_policy, save_token_reward_model  # noqa: E402

from annotate.errors import UsageError  # noqa: E402
from rlhf import train  # noqa: E402
from rlhf.reward_heads import HEADS_FILE, parse_objective  # noqa: E402


def pad_is_eos(tok):
    tok.pad_token = tok.eos_token  # as SmolLM2's: scoring must find the last token from lengths, never the pad id
    return tok


# -- the objective -------------------------------------------------------------------------------------------------
def test_objective_is_parsed_once_and_bad_heads_are_named():
    assert parse_objective("correct=2, overall=1") == {"correct": 2.0, "overall": 1.0}
    assert parse_objective("concise=-0.5,helpful=1") == {"concise": -0.5, "helpful": 1.0}
    for text, named in [("correct=2,nice=1", "'nice'"), ("correct", "'correct'"), ("correct=x", "'correct=x'"),
                        ("correct=1,correct=2", "'correct'"), ("overall=0", "every weight")]:  # fmt: skip
        with pytest.raises(UsageError, match=named):
            parse_objective(text)
    with pytest.raises(UsageError, match="'helpful' is not one of m's heads"):
        parse_objective("helpful=1", ("overall", "correct"), "m's heads")


def test_bad_heads_and_objectives_exit_2_naming_them(tmp_path, capsys):
    base = ["--data", str(tmp_path / "none.jsonl"), "--output-dir", str(tmp_path / "out")]
    for argv, named in [
        (["reward", "--heads", "overall,kind"], "'kind'"),
        (["reward", "--heads", "overall,correct", "--objective", "helpful=1"], "'helpful' is not one of the --heads"),
        (["reward", "--objective", "overall=1"], "--objective weighs the heads of --heads"),
        (["reward", "--heads", "overall,correct", "--length-debias", "odin"], "not odin"),
        (["ppo", "--reward-model", "x", "--objective", "correct=2,nice=1"], "'nice'"),
        (["rloo", "--reward-model", "x", "--objective", "correct=2,"], "''"),
        (["evaluate", "--objective", "kind=1"], "'kind'"),
    ]:
        assert train.main(argv + (base if argv[0] != "evaluate" else [])) == 2
        assert named in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before a run directory was made


# -- a hand-built two-head model: `overall` likes digits, `correct` dislikes them ---------------------------------
@pytest.fixture(scope="module")
def two_heads(tmp_path_factory):
    """toy_reward's token reward model with a second head reading the same feature negated, saved as a multi-head
    model (heads overall, correct; default objective overall=1)."""
    from transformers import AutoModelForSequenceClassification

    from rlhf.reward_heads import write_heads

    d = tmp_path_factory.mktemp("heads")
    tok = pad_is_eos(arithmetic_tokenizer())
    one = AutoModelForSequenceClassification.from_pretrained(save_token_reward_model(d / "one", tok))
    one.config.num_labels = 2
    two = AutoModelForSequenceClassification.from_config(one.config)
    two.load_state_dict({k: v for k, v in one.state_dict().items() if k != "score.weight"}, strict=False)
    with torch.no_grad():
        two.score.weight.copy_(torch.cat([one.score.weight, -one.score.weight]))  # (2, H)
    out = d / "two"
    out.mkdir()
    write_heads(two, out, ("overall", "correct"), {"overall": 1.0})
    two.save_pretrained(out)
    tok.save_pretrained(out)
    return {"rm": str(out), "plain": str(d / "one"), "tok": tok, "policy": save_policy(d / "policy", tok)}


PROMPT = [{"role": "user", "content": "What is 3 + 4 ?"}]
DIGITS, WORDS = "7 7 7", "the answer is"


def test_the_loaded_model_scores_the_objective_weighted_sum_of_its_heads(two_heads):
    from rlhf.reward import load_reward_model, score

    tok, rm = two_heads["tok"], two_heads["rm"]
    every = load_reward_model(rm, tok, num_labels=2)  # unfolded: both outputs
    heads = score(every, tok, [PROMPT] * 2, [DIGITS, WORDS], all_heads=True)
    with pytest.raises(ValueError, match="2 outputs"):  # reading output 0 alone would score one head silently
        score(every, tok, [PROMPT], [DIGITS])
    for objective, w in [(None, (1.0, 0.0)), ("correct=2,overall=1", (1.0, 2.0)), ("correct=1", (0.0, 1.0))]:
        folded = load_reward_model(rm, tok, objective=objective)
        assert folded.score.out_features == 1 and folded.config.num_labels == 1
        got = score(folded, tok, [PROMPT] * 2, [DIGITS, WORDS])
        assert got == pytest.approx([w[0] * o + w[1] * c for o, c in heads], abs=1e-5)
    with pytest.raises(UsageError, match="'helpful' is not one of .*two's heads"):
        load_reward_model(rm, tok, objective="helpful=1")
    with pytest.raises(UsageError, match="single head"):
        load_reward_model(two_heads["plain"], tok, objective="overall=1")
    saved = json.loads(Path(rm, HEADS_FILE).read_text())
    assert saved == {"heads": ["overall", "correct"], "objective": {"overall": 1.0}}


def test_objective_changes_which_response_ppo_prefers(two_heads):
    from rlhf import ppo

    tok = two_heads["tok"]
    responses = torch.tensor([tok.convert_tokens_to_ids([*text.split(), tok.eos_token]) for text in (DIGITS, WORDS)])
    preferred = {}
    for objective in (None, "correct=2,overall=1"):
        cfg = ppo.PPOArgs(model=two_heads["policy"], reward_model=two_heads["rm"], objective=objective)
        tok_, reward_tok, _, _, reward, value = ppo.load_models(cfg, "cpu")
        scores = ppo.score_responses(reward, reward_tok, tok_, [PROMPT] * 2, responses, 2)
        preferred[objective] = ("digits", "words")[int(scores.argmax())]
        assert value.score.out_features == 1  # the value model starts from the same objective-weighted head
        assert ppo.objective_record(reward) == ({"reward_objective": objective} if objective else
                                                {"reward_objective": "overall=1"})  # fmt: skip
    # The saved objective (overall) prefers the digits, correct=2,overall=1 the words: PPO would push opposite ways.
    assert preferred == {None: "digits", "correct=2,overall=1": "words"}


# -- learning: each head from its own picks ---------------------------------------------------------------------
def criteria_rows(n_prompts: int = 100, seed: int = 0) -> list[dict]:
    """Pairs where the heads disagree by construction. Annotators prefer the verbose answer ("the answer is N") and,
    between equally verbose ones, the right sum; `correct` picks the right sum (R = a + b; the wrong one is R + 50,
    so a tiny model tells them apart by the number's token: what is tested is that each head learns from its own
    labels, not arithmetic); `concise` picks the shorter answer where the lengths differ, and is missing elsewhere.
    So `overall` prefers the verbose wrong answer that `correct` rejects in a quarter of the pairs."""
    import random

    from fixtures import synthetic_arithmetic

    rng = random.Random(seed)
    rows = []
    for base in synthetic_arithmetic(n_prompts=n_prompts, wrong_per_prompt=1, seed=seed):
        right = int(base["chosen"][0]["content"])
        wrong = right + 50 + rng.randrange(10)
        long = lambda n: f"the answer is {n}"  # noqa: E731
        for chosen, rejected, correct, concise in [
            (long(wrong), str(right), -1, -1),
            (long(right), str(wrong), 1, -1),
            (long(right), long(wrong), 1, None),
            (str(right), str(wrong), 1, None),
        ]:
            rows.append({**base, "chosen": [{"role": "assistant", "content": chosen}],
                         "rejected": [{"role": "assistant", "content": rejected}], "chosen_id": chosen,
                         "rejected_id": rejected, "criterion_correct": correct, "criterion_concise": concise,
                         "correct_by": "annotators"})  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def heads_run(tmp_path_factory):
    from datasets import Dataset

    from rlhf.data import split_by_prompt

    root = tmp_path_factory.mktemp("heads_run")
    tok = pad_is_eos(arithmetic_tokenizer())
    model = save_tiny_model(root / "tiny", tok, layers=1, hidden=32, heads=2)
    train_set, test_set = split_by_prompt(Dataset.from_list(criteria_rows()), 0.2, 0)
    train_set.to_json(root / "prefs-train.jsonl")
    test_set.to_json(root / "prefs-test.jsonl")
    out = root / "run"
    argv = ["reward", "--model", model, "--data", str(root / "prefs-train.jsonl"), "--eval-data",
            str(root / "prefs-test.jsonl"), "--output-dir", str(out), "--heads", "overall,correct,concise",
            "--objective", "overall=1,correct=1", "--max-steps", "120", "--learning-rate", "3e-3",
            "--per-device-train-batch-size", "16", "--logging-steps", "40"]  # fmt: skip
    assert train.main(argv) == 0
    return out, tok


def test_multi_head_reward_model_learns_each_head_from_its_own_picks(heads_run):
    out, tok = heads_run
    res = json.loads((out / "eval.json").read_text())
    # Each head beats chance clearly on its own held-out picks (pairs it has no label for do not count).
    for head, pairs_per_prompt in (("overall", 4), ("correct", 4), ("concise", 2)):
        assert res[f"eval_head_{head}_pairs"] == pairs_per_prompt * (res["eval_pairs"] // 4)
        assert res[f"eval_head_{head}_accuracy"] >= 0.8, (head, res)
        assert res[f"eval_head_{head}_ci95"][0] > 0.5
    # overall prefers the verbose wrong answer correct rejects: one pair in four, by construction.
    assert res["eval_overall_vs_correct_disagreement"] == pytest.approx(0.25, abs=0.1)
    assert res["train_head_pairs_concise"] == res["train_pairs"] // 2
    assert (res["heads"], res["objective"]) == ("overall,correct,concise", "overall=1,correct=1")
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "overall", "1": "correct", "2": "concise"}  # three outputs, named
    assert json.loads((out / HEADS_FILE).read_text())["objective"] == {"overall": 1.0, "correct": 1.0}
    card = (out / "README.md").read_text()
    assert "## Reward heads" in card and "prefers the response the `correct` head rejects" in card


def test_the_trained_heads_rank_a_conflict_pair_by_the_objective(heads_run):
    from rlhf.reward import load_reward_model, score

    out, tok = heads_run
    prompt = [{"role": "user", "content": "What is 4 + 4 ?"}]
    verbose_wrong, short_right = "the answer is 58", "8"

    def prefers_verbose(objective: str) -> bool:
        a, b = score(load_reward_model(str(out), tok, objective=objective), tok, [prompt] * 2,
                     [verbose_wrong, short_right])  # fmt: skip
        return a > b

    assert prefers_verbose("overall=1") and not prefers_verbose("correct=1")
    assert not prefers_verbose("concise=1")
