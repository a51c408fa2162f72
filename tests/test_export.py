"""Export: vote aggregation against a plain-Python reference, splits by prompt, formats, and the real HH file."""

from __future__ import annotations

import gzip
import json
import random
import re
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from annotate.export import export
from annotate.importers import ASSISTANT
from annotate.importers import main as import_main
from annotate.schema import new_comparison
from annotate.split import split_score
from annotate.store import ComparisonStore

HH = Path(__file__).resolve().parents[2] / "shared/data/hh-rlhf-harmless-sample.jsonl.gz"


def vote(prompt: int, x: int, y: int, choice: str, strength: int | None, who: str = "u", **kw) -> dict:
    return new_comparison(
        prompt_id=f"p{prompt}",
        prompt=[{"role": "user", "content": f"question {prompt}"}],
        response_a_id=f"p{prompt}r{x}",
        response_a=f"answer {x} to {prompt}",
        source_a=f"m{x}",
        response_b_id=f"p{prompt}r{y}",
        response_b=f"answer {y} to {prompt}",
        source_b=f"m{y}",
        choice=choice,
        strength=strength if choice in ("a", "b") else None,
        annotator=who,
        **kw,
    )


def reference(records: list[dict]) -> dict:
    """The aggregation spelled out in plain Python: pair -> (winner, loser, n_votes, agreement, margin)."""
    retracted = {r["retracts"] for r in records if r["retracts"]}
    pairs: dict[tuple, list] = defaultdict(list)
    for r in records:
        if r["retracts"] or r["comparison_id"] in retracted or r["choice"] not in ("a", "b"):
            continue
        winner = r["response_a_id"] if r["choice"] == "a" else r["response_b_id"]
        pairs[(r["prompt_id"], frozenset((r["response_a_id"], r["response_b_id"])))].append(
            (winner, r["strength"] or 1)
        )
    out = {}
    for (pid, pair), votes in pairs.items():
        x, y = sorted(pair)
        score = sum(w if win == x else -w for win, w in votes)
        if score == 0:
            continue
        win, lose = (x, y) if score > 0 else (y, x)
        agree = sum(1 for v, _ in votes if v == win) / len(votes)
        out[(pid, win, lose)] = (len(votes), agree, abs(score) / len(votes))
    return out


@pytest.fixture
def voted_store(tmp_path) -> tuple[Path, list[dict]]:
    rng = random.Random(1)
    records = []
    for _ in range(600):
        p = rng.randrange(30)
        x, y = rng.sample(range(4), 2)
        choice = rng.choices(["a", "b", "tie", "both_bad", "skip"], [4, 4, 1, 1, 1])[0]
        records.append(vote(p, x, y, choice, rng.choice([1, 2, 3, None]), who=f"u{rng.randrange(5)}"))
    for r in rng.sample(records, 40):  # undo: retraction records pointing at earlier votes
        records.append(vote(0, 0, 1, "skip", None, who=r["annotator"], retracts=r["comparison_id"]))
    store = ComparisonStore(tmp_path / "store", seal_every=100)
    store.append_many(records[:300])
    store.write_batch(records[300:])
    return tmp_path / "store", records


def test_aggregation_matches_plain_python_reference(voted_store, tmp_path):
    root, records = voted_store
    stats = export(str(root), tmp_path / "prefs.parquet")
    got = pq.read_table(tmp_path / "prefs.parquet").to_pylist()
    ref = reference(records)
    assert stats["rows"] == len(got) == len(ref) > 0
    assert stats["no_majority"] > 0  # the fixture has pairs whose weighted votes cancel out
    for row in got:
        n, agree, margin = ref[(row["prompt_id"], row["chosen_id"], row["rejected_id"])]
        assert (row["n_votes"], row["agreement"], row["margin"]) == (n, pytest.approx(agree), pytest.approx(margin))
        assert row["chosen"] == [{"role": "assistant", "content": f"answer {row['chosen_id'].split('r')[-1]} to "
                                  f"{row['prompt_id'][1:]}"}]  # fmt: skip
        assert row["chosen_source"] == "m" + row["chosen_id"].split("r")[-1]
        assert row["prompt"] == [{"role": "user", "content": f"question {row['prompt_id'][1:]}"}]


def test_min_agreement_raw_and_split_by_prompt(voted_store, tmp_path):
    root, records = voted_store
    full = pq.read_table(export(str(root), tmp_path / "all.parquet")["files"][0])
    strict = export(str(root), tmp_path / "strict.parquet", min_agreement=0.75)
    kept = pq.read_table(tmp_path / "strict.parquet")
    assert kept.num_rows == sum(a >= 0.75 for a in full.column("agreement").to_pylist())
    assert strict["below_min_agreement"] == full.num_rows - kept.num_rows > 0

    raw = export(str(root), tmp_path / "raw.jsonl", raw=True)
    rows = [json.loads(line) for line in open(tmp_path / "raw.jsonl")]
    retracted = {r["retracts"] for r in records if r["retracts"]}
    standing = [
        r for r in records if r["choice"] in ("a", "b") and not r["retracts"] and r["comparison_id"] not in retracted
    ]
    assert raw["rows"] == len(rows) == len(standing)
    by_id = {r["comparison_id"]: r for r in standing}
    for row in rows:
        src = by_id[row["comparison_id"]]
        assert row["annotator"] == src["annotator"]
        assert row["chosen_id"] == (src["response_a_id"] if src["choice"] == "a" else src["response_b_id"])

    s = export(str(root), tmp_path / "prefs.parquet", test_fraction=0.2, seed=3)
    train, test = (pq.read_table(f) for f in s["files"])
    assert [Path(f).name for f in s["files"]] == ["prefs-train.parquet", "prefs-test.parquet"]
    p_train, p_test = set(train.column("prompt_id").to_pylist()), set(test.column("prompt_id").to_pylist())
    assert not p_train & p_test and train.num_rows + test.num_rows == full.num_rows
    # The one split (annotate.split): held out are the prompts whose seeded score is under the fraction.
    prompts = dict(zip(full.column("prompt_id").to_pylist(), full.column("prompt").to_pylist()))
    assert p_test == {pid for pid, p in prompts.items() if split_score(p, 3) < 0.2} and p_train


def test_export_from_a_store_url(voted_store, tmp_path):
    root, _ = voted_store
    export(f"file://{root}", tmp_path / "m.parquet")
    export(str(root), tmp_path / "l.parquet")
    assert (
        pq.read_table(tmp_path / "m.parquet")
        .sort_by("chosen_id")
        .equals(pq.read_table(tmp_path / "l.parquet").sort_by("chosen_id"))
    )


def test_store_without_usable_votes_exports_empty_files_with_the_columns(tmp_path):
    store = ComparisonStore(tmp_path / "s")
    store.append(vote(1, 0, 1, "tie", None))
    store.append(vote(1, 0, 1, "both_bad", None))
    store.close()  # sealed: export reads sealed store versions
    s = export(str(tmp_path / "s"), tmp_path / "e.parquet", test_fraction=0.5, allow_empty=True)
    assert (s["records"], s["votes"], s["rows"]) == (2, 0, 0)
    for f in s["files"]:
        t = pq.read_table(f)
        assert t.num_rows == 0 and {"prompt", "chosen", "rejected", "margin", "n_votes", "agreement"} <= set(
            t.schema.names
        )


def test_an_export_with_no_pairs_exits_2_in_one_line_and_writes_nothing(tmp_path, capsys):
    from annotate.__main__ import main as cli

    with ComparisonStore(tmp_path / "s") as store:  # a tie, a skip, and a 1-1 split: no pair has a preference
        store.append_many([vote(1, 0, 1, "tie", None), vote(1, 0, 1, "skip", None), vote(2, 0, 1, "a", 2, who="u"),
                           vote(2, 0, 1, "b", 2, who="v")])  # fmt: skip
    args = ["export", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "e.parquet")]
    assert cli(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert "no preference pairs to export" in err and "4 records, 2 usable a/b votes" in err
    assert "1 pairs without a majority" in err and "--allow-empty" in err
    assert not list(tmp_path.glob("e*"))
    assert cli([*args, "--test-fraction", "0.2"]) == 2 and not list(tmp_path.glob("e*"))
    assert cli([*args, "--allow-empty"]) == 0 and pq.read_table(tmp_path / "e.parquet").num_rows == 0


def test_an_export_whose_only_prompt_is_held_out_exits_2(tmp_path, capsys):
    """One prompt under a split can land on the held-out side, leaving nothing to train on: refused, not written."""
    from annotate.__main__ import main as cli

    with ComparisonStore(tmp_path / "s") as store:
        store.append(vote(1, 0, 1, "a", 2))
    seed = next(s for s in range(100) if split_score([{"role": "user", "content": "question 1"}], s) < 0.5)
    args = ["export", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "e.parquet"), "--test-fraction", "0.5"]
    assert cli([*args, "--seed", str(seed)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no pairs to train on" in err and "--test-fraction" in err
    assert not list(tmp_path.glob("e*"))


def _hh_export(tmp_path) -> tuple[list[dict], Path]:
    if not HH.exists():
        pytest.skip("needs ../shared/data/hh-rlhf-harmless-sample.jsonl.gz")
    import argparse

    ns = argparse.Namespace(
        src=HH, format="hh", store=tmp_path / "S", annotator=None, source=None, strict=False, allow_empty=False
    )
    assert import_main(ns) == 0
    export(str(tmp_path / "S"), tmp_path / "hh.parquet")
    return [json.loads(line) for line in gzip.open(HH, "rt")], tmp_path / "hh.parquet"


def test_real_hh_file_one_pair_per_record_with_turns_intact(tmp_path):
    source, out = _hh_export(tmp_path)
    rows = pq.read_table(out).to_pylist()
    split = lambda d: (d[: d.rfind(ASSISTANT)], d[d.rfind(ASSISTANT) + len(ASSISTANT) :].strip())  # noqa: E731
    plain = [r for r in source if split(r["chosen"])[0] == split(r["rejected"])[0]]
    assert len(rows) == len(source) and len(plain) > 0.99 * len(source)  # one pair per record, none skipped
    norm = lambda s: " ".join(s.split())  # noqa: E731
    by_prompt = {}
    for r in plain:
        by_prompt.setdefault(norm(split(r["chosen"])[0]), []).append(r)
    for row in rows:
        rendered = "".join(
            f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in row["prompt"]
        )
        if norm(rendered) not in by_prompt:
            # A record whose chosen reply itself contains "\n\nAssistant:": its reply is everything after the
            # shared prompt, and both dialogues are exactly prompt + reply.
            odd = [r for r in source if r not in plain and norm(r["chosen"]) == norm(rendered + ASSISTANT + " "
                   + row["chosen"][0]["content"])]  # fmt: skip
            assert len(odd) >= 1, rendered[:200]
            continue
        candidates = by_prompt[norm(rendered)]  # the prompt re-rendered is the source's prompt text
        assert any(
            row["chosen"][0]["content"] == split(r["chosen"])[1]
            and row["rejected"][0]["content"] == split(r["rejected"])[1]
            for r in candidates
        )
        assert row["prompt"][-1]["role"] == "user" and row["n_votes"] == 1


@pytest.mark.slow
def test_real_hh_export_trains_in_trl_reward_and_dpo(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets
    import torch
    from fixtures import save_tiny_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer

    from rlhf.models import load_tokenizer

    _, out = _hh_export(tmp_path)
    ds = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "c"))
    assert {"prompt", "chosen", "rejected", "margin"} <= set(ds.column_names)
    ds = ds.select(range(4))
    tok = load_tokenizer(None)
    model_dir = save_tiny_model(tmp_path / "tiny", tok, layers=1, hidden=32, heads=2)
    common = dict(max_steps=1, per_device_train_batch_size=2, use_cpu=True, bf16=False, report_to="none",
                  learning_rate=1e-2, max_length=128, save_strategy="no")  # fmt: skip

    rm = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    rm.config.pad_token_id = tok.pad_token_id
    before = [p.detach().clone() for p in rm.parameters()]
    RewardTrainer(model=rm, args=RewardConfig(output_dir=str(tmp_path / "rm"), **common), train_dataset=ds,
                  processing_class=tok).train()  # fmt: skip
    assert any(not torch.equal(a, b) for a, b in zip(before, rm.parameters()))

    policy = AutoModelForCausalLM.from_pretrained(model_dir)
    ref = AutoModelForCausalLM.from_pretrained(model_dir)
    before = [p.detach().clone() for p in policy.parameters()]
    DPOTrainer(model=policy, ref_model=ref, args=DPOConfig(output_dir=str(tmp_path / "dpo"), **common),
               train_dataset=ds, processing_class=tok).train()  # fmt: skip
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.parameters()))


@pytest.mark.parametrize("name", ["prefs.parquet", "prefs.jsonl"])
def test_a_failed_write_leaves_no_partial_file_under_the_final_name(voted_store, tmp_path, monkeypatch, name):
    import annotate.export as ex

    root, _ = voted_store
    out = tmp_path / "out" / name
    real = ex._write_file

    def dies_midway(table, f, suffix, label):  # a crash (disk full, kill) after part of the file was written
        real(table.slice(0, table.num_rows // 2), f, suffix, label)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ex, "_write_file", dies_midway)
    with pytest.raises(OSError, match="No space"):
        export(str(root), out)
    assert list(out.parent.iterdir()) == []  # neither the final name nor a temporary file
    calls = []

    def test_file_dies(table, f, suffix, label):  # the train file is complete, the test file is not
        calls.append(label)
        (real if len(calls) == 1 else dies_midway)(table, f, suffix, label)

    monkeypatch.setattr(ex, "_write_file", test_file_dies)
    with pytest.raises(OSError, match="No space"):
        export(str(root), out, test_fraction=0.2)
    assert len(calls) == 2 and list(out.parent.iterdir()) == []  # no train file without its test file

    monkeypatch.setattr(ex, "_write_file", real)
    export(str(root), out)
    previous = out.read_bytes()
    monkeypatch.setattr(ex, "_write_file", dies_midway)
    with pytest.raises(OSError):
        export(str(root), out, min_agreement=0.9)
    assert out.read_bytes() == previous and list(out.parent.iterdir()) == [out]  # the last good export stands


def test_export_names_the_store_version_it_read_and_rereads_it(tmp_path, capsys):
    from annotate.__main__ import main

    store = ComparisonStore(tmp_path / "s")
    store.write_batch([vote(1, 0, 1, "a", 2), vote(2, 0, 1, "b", 1)])
    assert main(["export", "--store", str(tmp_path / "s"), "--out", str(tmp_path / "v1.parquet")]) == 0
    err = capsys.readouterr().err
    m = re.search(r"store (\S+)@(\d+): 2 records, 2 usable votes -> 2 rows", err)
    assert m and m.group(1) == str(tmp_path / "s"), err
    store.write_batch([vote(3, 0, 1, "a", 3)])  # the store moves on
    again = export(f"{tmp_path / 's'}@{m.group(2)}", tmp_path / "again.parquet")
    assert (again["store_version"], again["records"], again["rows"]) == (int(m.group(2)), 2, 2)
    assert pq.read_table(tmp_path / "again.parquet").equals(pq.read_table(tmp_path / "v1.parquet"))
    latest = export(str(tmp_path / "s"), tmp_path / "v2.parquet")
    assert latest["store_version"] > again["store_version"] and latest["rows"] == 3


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"seed": -1}, "--seed"),
        ({"min_agreement": 2.0}, "--min-agreement"),
        ({"min_agreement": float("nan")}, "--min-agreement"),
        ({"test_fraction": 1.0}, "--test-fraction"),
    ],
)
def test_bad_options_are_refused_before_anything_is_read_or_written(voted_store, tmp_path, kw, message):
    from annotate.errors import UsageError

    with pytest.raises(UsageError, match=message):
        export(str(voted_store[0]), tmp_path / "o.parquet", **kw)
    assert not (tmp_path / "o.parquet").exists()
