"""The one split by prompt and the one prompt id (issue 12): export, reward/DPO and PPO/RLOO hold out the same
prompts of the same data, whatever the row order, and a prompt has one id whichever file it came from."""

from __future__ import annotations

import argparse
import hashlib
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures import synthetic_arithmetic

from annotate.export import export
from annotate.export import split_by_prompt as export_split
from annotate.schema import new_comparison, prompt_id_for
from annotate.split import held_out, split_messages, split_score
from annotate.store import ComparisonStore
from rlhf.data import heldout_path, load_preferences, load_prompts, load_splits, split_prompts


def key(messages: list[dict]) -> str:
    """Prompts compared by content: the trainers see messages, not always the file's prompt_id."""
    return prompt_id_for(messages)


def reward_split(path, fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """(train, held-out) prompts as reward/DPO training splits them (rlhf.common.load_data -> prepare -> here)."""
    train, test = load_splits(str(path), None, fraction, seed)
    return {key(p) for p in train["prompt"]}, {key(p) for p in test["prompt"]}


def ppo_split(path, fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """(train, evaluation) prompts exactly as rlhf.ppo / rlhf.rloo compute them."""
    train, test = split_prompts(load_prompts(path), heldout_path(str(path), None), fraction, seed)
    return {key(p) for p in train}, {key(p) for p in test}


def write_jsonl(path, rows: list[dict]):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("seed", [0, 3])
def test_reward_training_and_ppo_evaluation_never_share_a_prompt(tmp_path, seed):
    # prompt_id "add-a-b" is not the content id: the split must still agree with PPO, which sees only messages.
    rows = synthetic_arithmetic(n_prompts=60, wrong_per_prompt=3)
    splits = []
    for order in range(4):
        shuffled = random.Random(order).sample(rows, len(rows))
        if order == 3:  # a file without prompt ids: they come from the messages
            shuffled = [{k: v for k, v in r.items() if k != "prompt_id"} for r in shuffled]
        path = write_jsonl(tmp_path / f"prefs{order}.jsonl", shuffled)
        rm_train, rm_test = reward_split(path, 0.2, seed)
        ppo_train, ppo_eval = ppo_split(path, 0.2, seed)
        assert not rm_train & ppo_eval
        assert (ppo_train, ppo_eval) == (rm_train, rm_test) and rm_test and rm_train
        splits.append((rm_train, rm_test))
    assert all(s == splits[0] for s in splits)  # row order and ids never move a prompt
    # Parquet reads the same split.
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "prefs.parquet")
    assert reward_split(tmp_path / "prefs.parquet", 0.2, seed) == splits[0]
    assert ppo_split(tmp_path / "prefs.parquet", 0.2, seed) == splits[0]


def test_fractions_nest_so_a_smaller_evaluation_fraction_stays_held_out(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", synthetic_arithmetic(n_prompts=80, wrong_per_prompt=1))
    rm_train, rm_test = reward_split(path, 0.3, 0)
    _, ppo_eval = ppo_split(path, 0.1, 0)
    assert ppo_eval <= rm_test and not rm_train & ppo_eval
    small, large = (reward_split(path, f, 0)[1] for f in (0.1, 0.3))
    assert small < large
    # The documented limit: evaluating with a larger fraction than the reward model's takes in prompts it trained on.
    _, wide_eval = ppo_split(path, 0.5, 0)
    assert wide_eval & rm_train


def test_a_prompts_side_depends_on_nothing_but_its_messages_and_the_seed():
    prompts = [r["prompt"] for r in synthetic_arithmetic(n_prompts=100, wrong_per_prompt=1)]
    _, test = split_messages(prompts, 0.25, 7)
    assert {key(p) for p in test} == {key(p) for p in prompts if split_score(p, 7) < 0.25}
    for i in range(5):  # any subset (large enough not to need the fallbacks) splits its prompts the same way
        subset = random.Random(i).sample(prompts, 40)
        _, sub_test = split_messages(subset, 0.25, 7)
        assert {key(p) for p in sub_test} == {key(p) for p in test} & {key(p) for p in subset}
    _, other_seed = split_messages(prompts, 0.25, 8)
    assert {key(p) for p in other_seed} != {key(p) for p in test}


def _store(path, rows: list[dict]) -> str:
    """A store holding one vote per synthetic pair (pool-style prompt ids "add-a-b")."""
    records = [
        new_comparison(
            prompt_id=r["prompt_id"],
            prompt=r["prompt"],
            response_a_id=r["chosen_id"],
            response_a=r["chosen"][0]["content"],
            response_b_id=r["rejected_id"],
            response_b=r["rejected"][0]["content"],
            choice="a",
            annotator="u",
        )
        for r in rows
    ]
    with ComparisonStore(path) as store:
        store.write_batch(records)
    return str(path)


def test_export_split_agrees_with_reward_and_ppo(tmp_path):
    store = _store(tmp_path / "store", synthetic_arithmetic(n_prompts=50, wrong_per_prompt=2))
    for seed in (0, 5):
        s = export(store, tmp_path / f"split{seed}.parquet", test_fraction=0.2, seed=seed)
        ex_train, ex_test = ({key(p) for p in pq.read_table(f).column("prompt").to_pylist()} for f in s["files"])
        # Reward and PPO on the unsplit export (and on the store itself) hold out the export's test prompts.
        full = export(store, tmp_path / f"all{seed}.parquet")["files"][0]
        assert reward_split(full, 0.2, seed) == (ex_train, ex_test)
        assert ppo_split(full, 0.2, seed) == (ex_train, ex_test)
        assert reward_split(store, 0.2, seed) == (ex_train, ex_test)
        # Given the export's -train file, both find its -test sibling: the same prompts again.
        assert reward_split(s["files"][0], 0.2, seed) == (ex_train, ex_test)
        assert ppo_split(s["files"][0], 0.2, seed)[1] == ex_test


def test_a_reused_prompt_id_is_held_out_whole_and_one_prompt_ids_share_a_side():
    q = lambda text: [{"role": "user", "content": text}]  # noqa: E731
    prompts = [q(f"question {i}") for i in range(40)]
    ids = [f"p{i}" for i in range(40)] + ["p0", "dup"]  # p0 again with other messages; "dup" repeats prompt 1
    table = pa.table({"prompt_id": ids, "prompt": [*prompts, q("other"), prompts[1]], "x": list(range(42))})
    for seed in range(6):
        train, test = export_split(table, 0.3, seed)
        tr, te = set(train.column("prompt_id").to_pylist()), set(test.column("prompt_id").to_pylist())
        assert not tr & te and len(tr | te) == 41
        assert ("p1" in te) == ("dup" in te)  # the same messages under two ids
        # p0 is held out as soon as either of its prompts would be, so PPO (messages only) never evaluates on it
        # while it trains the reward model.
        assert ("p0" in te) == (min(split_score(prompts[0], seed), split_score(q("other"), seed)) < 0.3)


def test_both_sides_are_non_empty_from_two_prompts_and_the_fallbacks_agree(tmp_path):
    rows = synthetic_arithmetic(n_prompts=2, wrong_per_prompt=2)
    path = write_jsonl(tmp_path / "two.jsonl", rows)
    scores = {key(r["prompt"]): split_score(r["prompt"], 0) for r in rows}
    lowest, highest = min(scores, key=scores.get), max(scores, key=scores.get)
    for fraction, expect in ((1e-9, {lowest}), (0.999999, {lowest, highest} - {highest})):
        rm_train, rm_test = reward_split(path, fraction, 0)
        ppo_train, ppo_eval = ppo_split(path, fraction, 0)
        assert rm_test == ppo_eval == expect and rm_train == ppo_train == set(scores) - expect
    assert held_out({"a": 0.5, "b": 0.5}, 0.1) == {"a", "b"}  # ties move together
    assert held_out({"a": 0.05}, 0.1) == {"a"} and held_out({}, 0.5) == set()

    one = write_jsonl(tmp_path / "one.jsonl", synthetic_arithmetic(n_prompts=1, wrong_per_prompt=3))
    with pytest.raises(Exception, match="at least 2 prompts"):
        load_splits(str(one), None, 0.2, 0)
    with pytest.raises(ValueError, match="at least 2 distinct prompts"):
        ppo_split(one, 0.2, 0)
    # Export never fails on it: a lone prompt whose score is over the fraction stays in training.
    table = pa.Table.from_pylist(synthetic_arithmetic(n_prompts=1, wrong_per_prompt=3))
    train, test = export_split(table, 0.2, 0)
    assert train.num_rows + test.num_rows == 3 and (test.num_rows == 3) == (
        split_score(table["prompt"][0].as_py(), 0) < 0.2
    )
    assert [t.num_rows for t in export_split(table.slice(0, 0), 0.2, 0)] == [0, 0]


# -- one prompt id --------------------------------------------------------------------------------------------
DIALOGUE = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hi! How can I help?"},
    {"role": "user", "content": "What is 2 + 2 ? Ünïcode too."},
]


def test_the_same_prompt_gets_one_id_from_import_prompts_files_preferences_and_generate(tmp_path):
    from fixtures import arithmetic_tokenizer, save_tiny_model

    from annotate import importers
    from annotate.pool import read_prompts
    from annotate.store import snapshot
    from rlhf.generate import generate_pool

    # Kept exactly as imports always made it: ids already in users' stores stay valid.
    legacy = "p-" + hashlib.sha1(json.dumps(DIALOGUE, ensure_ascii=False).encode()).hexdigest()[:16]
    assert prompt_id_for(DIALOGUE) == importers.prompt_id_for(DIALOGUE) == legacy
    assert prompt_id_for([{"content": m["content"], "role": m["role"]} for m in DIALOGUE]) == legacy  # key order
    assert prompt_id_for("Hi") == prompt_id_for([{"role": "user", "content": "Hi"}])

    # HH import.
    hh_turns = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in DIALOGUE)
    hh = write_jsonl(
        tmp_path / "hh.jsonl", [{"chosen": hh_turns + "\n\nAssistant: 4", "rejected": hh_turns + "\n\nAssistant: 5"}]
    )
    ns = argparse.Namespace(src=hh, format="hh", store=tmp_path / "S", annotator=None, source=None, strict=False,
                            allow_empty=False)  # fmt: skip
    assert importers.main(ns) == 0
    table, _ = snapshot(str(tmp_path / "S"), live=True)
    assert table.column("prompt").to_pylist() == [DIALOGUE]
    ids = {"hh import": table.column("prompt_id")[0].as_py()}

    # Prompts files (JSONL without ids, plain text) and a preference file without prompt_id.
    ids["prompts.jsonl"] = read_prompts(write_jsonl(tmp_path / "p.jsonl", [{"prompt": DIALOGUE}]))[0]["prompt_id"]
    (tmp_path / "p.txt").write_text("Hi\n")
    assert read_prompts(tmp_path / "p.txt")[0]["prompt_id"] == prompt_id_for("Hi")
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": DIALOGUE, "chosen": "4", "rejected": "5"}])
    ids["preferences"] = load_preferences(prefs)[0]["prompt_id"]

    # generate: a real (tiny) model samples a pool from the prompts file and from a bare prompt.
    model = save_tiny_model(tmp_path / "m", arithmetic_tokenizer(), layers=1, hidden=32, heads=2)
    kw = dict(n=1, device="cpu", max_new_tokens=3, progress=False)
    pool = generate_pool(read_prompts(tmp_path / "p.jsonl"), [model], **kw)
    pool += generate_pool([{"prompt": DIALOGUE}], [model], **kw)
    assert len(pool) == 2 and {r["prompt_id"] for r in pool} == {legacy}
    assert ids == dict.fromkeys(ids, legacy), ids
