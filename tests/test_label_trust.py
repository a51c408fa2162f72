"""Label trust (issue 16, items 2 and 3): `export --aggregate` writes p_chosen and weight, and `reward` / `dpo`
train on them (rlhf/label_trust.py): the losses are the stated equations, equal TRL's where they should, are ignored
under `--label-trust off`, and soft labels from a Dawid-Skene export beat the majority vote of noisy annotators."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

BENCH = Path(__file__).parents[1] / "bench/label_trust.py"
# The export's columns before issue 16, in order: --aggregate majority keeps them and adds p_chosen and weight.
MAJORITY_COLUMNS = ["prompt", "chosen", "rejected", "margin", "prompt_id", "n_votes", "agreement", "chosen_id",
                    "rejected_id", "chosen_source", "rejected_source", "criterion_correct", "criterion_helpful",
                    "criterion_harmless", "criterion_concise", "correct_by"]  # fmt: skip


def bench():
    """bench/label_trust.py as a module (bench/ is not a package): its simulated crowd and store are the tests'."""
    if "label_trust_bench" not in sys.modules:
        spec = importlib.util.spec_from_file_location("label_trust_bench", BENCH)
        module = importlib.util.module_from_spec(spec)
        sys.modules["label_trust_bench"] = module
        spec.loader.exec_module(module)
    return sys.modules["label_trust_bench"]


def arithmetic_pairs(per_prompt: int, seed: int) -> list:
    """Right sum against a far-off wrong one (a tiny model tells them apart by the number's token); the verbose form
    "the answer is N" goes to the better response in even-numbered pairs of a prompt and to the worse in odd ones,
    so length says nothing about quality, and an always-longer annotator is right half the time."""
    from annotate.schema import prompt_id_for

    B, rng, out = bench(), random.Random(seed), []
    for a in range(10):
        for b in range(10):
            prompt = [{"role": "user", "content": f"What is {a} + {b} ?"}]
            for k in range(per_prompt):
                good, bad = str(a + b), str(a + b + 50 + rng.randrange(20))
                good, bad = ("the answer is " + good, bad) if k % 2 == 0 else (good, "the answer is " + bad)
                out.append(B.Pair(prompt_id_for(prompt), prompt, good, bad))
    return out


def noisy_crowd() -> list:
    B = bench()
    return [*(B.Annotator(f"good{i}", "reliable", 0.95) for i in range(3)), B.Annotator("random", "random"),
            B.Annotator("flipper", "flipper", 0.05), B.Annotator("longer", "longer")]  # fmt: skip


@pytest.fixture(scope="module")
def voted(tmp_path_factory):
    """A real store of simulated votes (3 per pair, half of them unreliable) on 80 prompts' pairs, the held-out
    prompts' true pairs, and the export of each --aggregate method."""
    from annotate.export import export
    from annotate.split import held_out, split_score

    B, root = bench(), tmp_path_factory.mktemp("label_trust")
    pairs = arithmetic_pairs(2, seed=0)
    test_ids = held_out({p.prompt_id: split_score(p.prompt, 0) for p in pairs}, 0.25)
    train = [p for p in pairs if p.prompt_id not in test_ids]
    test = [p for p in arithmetic_pairs(6, seed=100) if p.prompt_id in test_ids]
    records = B.simulate_votes(train, noisy_crowd(), seed=0, votes=3, unreliable_share=0.5)
    store = B.write_store(records, root / "store")
    exports = {m: export(str(store), root / f"{m}.parquet", method=m) for m in ("majority", "weighted", "dawid-skene")}
    return {"root": root, "train": train, "records": records, "store": store, "exports": exports,
            "test": B.write_parquet(B.truth_rows(test), root / "truth-test.parquet")}  # fmt: skip


# -- the data ------------------------------------------------------------------------------------------------------
def test_simulated_crowd_casts_the_share_of_votes_asked_and_each_pair_gets_distinct_annotators(voted):
    records, train = voted["records"], voted["train"]
    assert len(records) == 3 * len(train)
    unreliable = sum(r["annotator"] in ("random", "flipper", "longer") for r in records) / len(records)
    assert unreliable == pytest.approx(0.5, abs=0.06)
    by_pair: dict = {}
    for r in records:
        by_pair.setdefault((r["prompt_id"], frozenset((r["response_a_id"], r["response_b_id"]))), []).append(r)
    assert all(len({r["annotator"] for r in v}) == 3 for v in by_pair.values())
    assert {r["left"] for r in records} == {"a", "b"}  # placed votes, both sides


def test_export_columns_for_each_method(voted):
    from collections import Counter

    B = bench()
    strength = Counter()  # (prompt_id, chosen_id, rejected_id) -> votes for chosen minus against (strength 1 each)
    for r in voted["records"]:
        win, lose = (r["response_a_id"], r["response_b_id"])[:: 1 if r["choice"] == "a" else -1]
        strength[(r["prompt_id"], win, lose)] += 1
        strength[(r["prompt_id"], lose, win)] -= 1
    accuracy = {}
    for method, stats in voted["exports"].items():
        rows = pq.read_table(stats["files"][0]).to_pylist()
        assert list(rows[0]) == [*MAJORITY_COLUMNS, "p_chosen", "weight"] and stats["aggregate"] == method
        assert stats["rows"] + stats["no_majority"] == stats["pairs"] == len(voted["train"])
        for row in rows:
            assert 0.5 < row["p_chosen"] <= 1.0 and row["weight"] == pytest.approx(2 * row["p_chosen"] - 1)
            # agreement and margin are the votes' own figures toward the exported chosen response
            net = strength[(row["prompt_id"], row["chosen_id"], row["rejected_id"])]
            assert row["margin"] == pytest.approx(net / row["n_votes"])
            assert row["agreement"] == pytest.approx((row["n_votes"] + net) / 2 / row["n_votes"])
            if method == "majority":
                assert row["p_chosen"] == pytest.approx(row["agreement"])  # strength 1: the vote share
        against = sum(strength[(r["prompt_id"], r["chosen_id"], r["rejected_id"])] <= 0 for r in rows)
        assert stats["against_majority"] == against and (against == 0) == (method == "majority")
        accuracy[method] = B.label_accuracy(Path(stats["files"][0]), voted["train"])["label_accuracy"]
    # The latent-truth model undoes the flipper and discounts the random and always-longer annotators.
    assert accuracy["dawid-skene"] > accuracy["majority"] + 0.1, accuracy
    assert accuracy["weighted"] > accuracy["majority"] + 0.1, accuracy


def test_majority_export_is_unchanged_but_for_the_new_columns(tmp_path):
    """Today's strength-weighted majority (the plain-Python reference of test_export), with p_chosen = the chosen
    side's share of the strength and weight = the winning share minus the losing one."""
    from test_export import reference, vote

    from annotate.export import export
    from annotate.store import ComparisonStore

    rng, records = random.Random(3), []
    for _ in range(400):
        x, y = rng.sample(range(4), 2)
        choice = rng.choice(["a", "b", "b", "a", "tie"])
        records.append(vote(rng.randrange(20), x, y, choice, rng.choice([1, 2, 3, None]), who=f"u{rng.randrange(4)}"))
    ComparisonStore(tmp_path / "s").write_batch(records)
    stats = export(str(tmp_path / "s"), tmp_path / "e.parquet")
    rows, ref = pq.read_table(tmp_path / "e.parquet").to_pylist(), reference(records)
    assert stats["rows"] == len(rows) == len(ref) > 0 and stats["against_majority"] == 0
    total: dict = {}
    for r in records:
        if r["choice"] in ("a", "b"):
            key = (r["prompt_id"], frozenset((r["response_a_id"], r["response_b_id"])))
            total[key] = total.get(key, 0) + (r["strength"] or 1)
    for row in rows:
        n, agree, margin = ref[(row["prompt_id"], row["chosen_id"], row["rejected_id"])]
        assert (row["n_votes"], row["agreement"], row["margin"]) == (n, pytest.approx(agree), pytest.approx(margin))
        share = margin * n / total[(row["prompt_id"], frozenset((row["chosen_id"], row["rejected_id"])))]
        assert (row["p_chosen"], row["weight"]) == (pytest.approx((1 + share) / 2), pytest.approx(share))


def test_aggregate_options_are_checked(voted, tmp_path):
    from annotate.errors import UsageError
    from annotate.export import export

    with pytest.raises(UsageError, match="--aggregate"):
        export(str(voted["store"]), tmp_path / "o.parquet", method="mean")
    with pytest.raises(UsageError, match="--raw"):
        export(str(voted["store"]), tmp_path / "o.parquet", method="dawid-skene", raw=True)
    assert not (tmp_path / "o.parquet").exists()


# -- the losses ----------------------------------------------------------------------------------------------------
def test_soft_bt_loss_is_the_hard_loss_at_p1_and_has_no_direction_at_half():
    import torch
    import torch.nn.functional as F

    from rlhf.label_trust import bt_pair_loss

    d = torch.linspace(-3, 3, 13, requires_grad=True)
    one, half = torch.ones(13), torch.full((13,), 0.5)
    assert torch.allclose(bt_pair_loss(d, {"p_chosen": one}), -F.logsigmoid(d))
    assert torch.allclose(bt_pair_loss(d, {}), -F.logsigmoid(d))
    at_half = bt_pair_loss(d, {"p_chosen": half})
    assert torch.allclose(at_half, at_half.flip(0))  # symmetric: l(d) = l(-d)
    (grad,) = torch.autograd.grad(at_half.sum(), d)
    assert grad[6].abs() < 1e-7 and torch.allclose(grad, -grad.flip(0))  # 0 at d = 0, pulls d to 0 from either side
    p = torch.linspace(0.5, 1.0, 13)
    (grad,) = torch.autograd.grad(bt_pair_loss(d, {"p_chosen": p}).sum(), d)
    assert torch.allclose(grad, torch.sigmoid(d) - p, atol=1e-6)  # BCE's slope: at rest where sigmoid(d) = p
    assert torch.allclose(bt_pair_loss(d, {"weight": 2 * p - 1}), (2 * p - 1) * -F.logsigmoid(d))


def write_pairs(path: Path, p_chosen: list[float] | None, n_prompts: int = 12) -> Path:
    from fixtures import synthetic_arithmetic

    rows = synthetic_arithmetic(n_prompts=n_prompts, wrong_per_prompt=2)
    for i, r in enumerate(rows):
        r["criterion_correct"] = 1 if i % 2 else None  # for --heads overall,correct
        if i % 3 == 0:  # responses of unequal length in a third of the pairs (LD-DPO weighs the tail)
            r["chosen"] = [{"role": "assistant", "content": "the answer is " + r["chosen"][0]["content"]}]
        if p_chosen is not None:
            r["p_chosen"] = p_chosen[i % len(p_chosen)]
            r["weight"] = 2 * r["p_chosen"] - 1
    return bench().write_parquet(rows, path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from fixtures import arithmetic_tokenizer, save_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {"model": save_tiny_model(root / "m", arithmetic_tokenizer(), layers=1, hidden=32, heads=2),
            "soft": write_pairs(root / "soft.parquet", [1.0, 0.8, 0.6, 0.5]),
            "hard": write_pairs(root / "hard.parquet", None), "root": root}  # fmt: skip


def reward_trainer(tiny, tmp_path, data: str = "soft", **kw):
    from rlhf.reward import RewardArgs, build_trainer

    cfg = RewardArgs(model=tiny["model"], data=str(tiny[data]), output_dir=str(tmp_path), test_fraction=0.2,
                     per_device_train_batch_size=8, **kw)  # fmt: skip
    return build_trainer(cfg)


def batch_of(trainer, n: int = 8) -> dict:
    return trainer.data_collator([trainer.train_dataset[i] for i in range(n)])


def test_reward_trainer_trains_the_soft_bt_loss_and_equals_trl_at_p1(tiny, tmp_path):
    import torch
    import torch.nn.functional as F
    from trl import RewardTrainer

    from rlhf.label_trust import model_inputs

    trainer, _, _, info, _ = reward_trainer(tiny, tmp_path)
    assert type(trainer).__name__ == "LabelTrustTrainer" and info["label_trust"].startswith("on: per-pair p_chosen")
    batch = batch_of(trainer)
    p = batch["p_chosen"]
    assert len(set(p.tolist())) > 1
    trainer.model.eval()
    with torch.no_grad():
        r_c, r_r = trainer.model(**model_inputs(batch)).logits.squeeze(-1).chunk(2)
        want = -(p * F.logsigmoid(r_c - r_r) + (1 - p) * F.logsigmoid(r_r - r_c)).mean()
        assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(want.item(), rel=1e-5)
        ones = {**batch, "p_chosen": torch.ones_like(p)}
        trl = RewardTrainer.compute_loss(trainer, trainer.model, {k: v for k, v in batch.items() if k != "p_chosen"})
        assert trainer.compute_loss(trainer.model, ones).item() == pytest.approx(trl.item(), rel=1e-5)


@pytest.mark.parametrize("method", ["joint", "odin", "poe", "heads"])
def test_every_reward_method_reads_the_soft_label(tiny, tmp_path, method):
    import torch

    kw = {"heads": "overall,correct"} if method == "heads" else {"length_debias": method}
    trainer, *_ = reward_trainer(tiny, tmp_path, **kw)
    assert "p_chosen" in trainer.extra_columns
    batch = batch_of(trainer)
    trainer.model.eval()
    with torch.no_grad():
        soft = trainer.compute_loss(trainer.model, dict(batch)).item()
        hard = trainer.compute_loss(trainer.model, {**batch, "p_chosen": torch.ones_like(batch["p_chosen"])}).item()
    assert soft != pytest.approx(hard, abs=1e-6)


def test_label_trust_off_or_absent_columns_leave_the_trl_trainers(tiny, tmp_path):
    from trl import RewardTrainer

    from rlhf.dpo import DPOArgs
    from rlhf.dpo import build_trainer as dpo_trainer

    for data, mode, why in [("soft", "off", "off"), ("hard", "on", "off: the data has no p_chosen column")]:
        trainer, _, _, info, _ = reward_trainer(tiny, tmp_path / data, data=data, label_trust=mode)
        assert type(trainer) is RewardTrainer and info["label_trust"].startswith(why)
        assert "p_chosen" not in trainer.train_dataset.column_names
    cfg = DPOArgs(model=tiny["model"], data=str(tiny["soft"]), output_dir=str(tmp_path / "d"), label_trust="off")
    trainer, info = dpo_trainer(cfg)
    assert not hasattr(trainer, "length_loss") and info["label_trust"] == "off"  # no rlhf/dpo_losses.py trainer
    assert "p_chosen" not in trainer.train_dataset.column_names


def dpo_trainer_on(tiny, tmp_path, data: str, **kw):
    """A DPO trainer on `data` whose policy has moved off the reference, identically in every trainer built here."""
    import torch

    from rlhf.dpo import DPOArgs, build_trainer

    cfg = DPOArgs(model=tiny["model"], data=str(data), output_dir=str(tmp_path), test_fraction=0.2, beta=0.5,
                  per_device_train_batch_size=8, **kw)  # fmt: skip
    trainer, _ = build_trainer(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in trainer.model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
    trainer.model.eval()
    return trainer


def dpo_loss(trainer, drop: tuple[str, ...] = ()) -> float:
    import torch

    batch = {k: v for k, v in batch_of(trainer).items() if k not in drop}
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch).item()


@pytest.mark.parametrize("packing, precompute, loss", [(True, True, "sigmoid"), (False, False, "sigmoid"),
                                                      (True, True, "ld")])  # fmt: skip
def test_dpo_per_pair_smoothing_is_trl_label_smoothing_when_all_p_are_equal(tiny, tmp_path, packing, precompute, loss):
    """cDPO with eps = 1 - p: -(1 - eps) log sigmoid(h) - eps log sigmoid(-h). TRL 1.16 computes label smoothing only
    in its `robust` loss; 2 (1 - eps) * sigmoid - (1 - 2 eps) * robust is exactly cDPO, in TRL's own code (with
    LD-DPO's likelihood too, which TRL applies to every loss)."""
    eps, kw = 0.3, {"packing": packing, "precompute_ref_log_probs": precompute, "loss_type": loss}
    data = write_pairs(tmp_path / "flat.parquet", [1 - eps])
    ours = dpo_trainer_on(tiny, tmp_path / "ours", data, **kw)
    assert "p_chosen" in batch_of(ours)
    trl = dpo_trainer_on(tiny, tmp_path / "trl", data, label_trust="off", **kw,
                         trl_overrides={"loss_type": ["sigmoid", "robust"], "label_smoothing": eps,
                                        "loss_weights": [2 * (1 - eps), -(1 - 2 * eps)]})  # fmt: skip
    assert dpo_loss(ours) == pytest.approx(dpo_loss(trl), rel=1e-5)
    hard = dpo_trainer_on(tiny, tmp_path / "hard", data, label_trust="off", **kw)  # TRL's sigmoid: not the same
    assert abs(dpo_loss(hard) - dpo_loss(ours)) > 1e-3


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo", "simpo"])
def test_dpo_soft_labels_are_the_expected_loss_over_the_label(tiny, tmp_path, loss_type):
    """Per pair p l(d) + (1 - p) l(-d): with every loss, the soft loss of a batch is linear in each pair's p, so it
    equals p-weighted mixtures of the losses at p = 1 and p = 0 (computed one pair at a time)."""
    import torch

    trainer = dpo_trainer_on(tiny, tmp_path, tiny["soft"], loss_type=loss_type)
    examples = [trainer.train_dataset[i] for i in range(6)]
    want = 0.0
    with torch.no_grad():
        for ex in examples:
            at = {q: trainer.compute_loss(trainer.model, trainer.data_collator([{**ex, "p_chosen": q}])).item()
                  for q in (0.0, 1.0)}  # fmt: skip
            want += ex["p_chosen"] * at[1.0] + (1 - ex["p_chosen"]) * at[0.0]
        got = trainer.compute_loss(trainer.model, trainer.data_collator(examples)).item()
    assert got == pytest.approx(want / len(examples), rel=1e-4)


def test_cli_records_the_label_mode_in_eval_json_and_the_card(tiny, tmp_path):
    import yaml

    from rlhf import train

    recipe = tmp_path / "off.yaml"
    recipe.write_text("label_trust: off\n")  # unquoted: YAML reads a boolean, which still means off
    common = ["--model", tiny["model"], "--data", str(tiny["soft"]), "--max-steps", "2",
              "--per-device-train-batch-size", "8"]  # fmt: skip
    for command, mode, flags in [("reward", "on", []), ("reward", "off", ["--config", str(recipe)]),
                                 ("dpo", "weight", ["--label-trust", "weight"])]:  # fmt: skip
        out = tmp_path / f"{command}-{mode}"
        assert train.main([command, *flags, *common, "--output-dir", str(out)]) == 0
        recorded = json.loads((out / "eval.json").read_text())["label_trust"]
        assert recorded.startswith(mode) and (mode == "off") == ("per-pair" not in recorded)
        assert yaml.safe_load((out / "config.yaml").read_text())["label_trust"] == mode
        assert f"| label_trust | {recorded} |" in (out / "README.md").read_text()
    assert train.main(["reward", "--label-trust", "maybe", *common, "--output-dir", str(tmp_path / "no")]) == 2
    assert not (tmp_path / "no").exists()


# -- learning ------------------------------------------------------------------------------------------------------
def test_soft_labels_from_dawid_skene_beat_the_majority_of_noisy_annotators(voted, tiny):
    """The same tiny reward model, trained for the same 60 steps on the majority export (hard labels) and on the
    Dawid-Skene export (soft labels), scored on held-out prompts' true labels. Half the votes are unreliable (a
    random clicker, a flipper, an always-longer annotator): the majority keeps about a quarter of the labels wrong,
    most of them toward the longer response, which the majority-trained model learns."""
    from rlhf.reward import RewardArgs, run

    accuracy = {}
    for method, trust in (("majority", "off"), ("dawid-skene", "on")):
        cfg = RewardArgs(model=tiny["model"], data=voted["exports"][method]["files"][0], eval_data=str(voted["test"]),
                         output_dir=str(voted["root"] / f"run-{method}"), max_steps=60, learning_rate=3e-3,
                         per_device_train_batch_size=16, logging_steps=1000, label_trust=trust, seed=0)  # fmt: skip
        accuracy[method] = run(cfg)["eval_accuracy"]
    assert accuracy["dawid-skene"] >= 0.95 and accuracy["dawid-skene"] > accuracy["majority"] + 0.04, accuracy


def test_the_bench_probe_head_is_a_reward_model_read_by_score(voted, tiny, tmp_path):
    """bench/label_trust.py --probe fits a head on states read through rlhf.reward.score (an identity head): put into
    a one-output reward model's score head, the fitted head makes score() give exactly the pair margins the probe
    scored, so the probe's accuracy is that reward model's. Soft labels of 1 fit the hard-label head."""
    import numpy as np
    import torch

    from rlhf.models import load_tokenizer
    from rlhf.reward import load_reward_model, score

    B, pairs = bench(), voted["train"][:120]
    feats = B.pair_features(tiny["model"], pairs, 512, tmp_path / "states.npz")
    assert feats.kept.all() and feats.better.shape == (len(pairs), 32)
    assert np.array_equal(B.pair_features("unused: read from the cache", pairs, 512, tmp_path / "states.npz").worse,
                          feats.worse)  # fmt: skip
    has, better, p_chosen = B.export_labels(Path(voted["exports"]["dawid-skene"]["files"][0]), pairs)
    assert has.all() and 0.5 < p_chosen.min() and p_chosen.max() <= 1.0
    head, l2 = B.arm_head(feats, better, has, p_chosen)
    assert l2 in B.L2_GRID and np.abs(head).sum() > 0

    tokenizer = load_tokenizer(tiny["model"])
    model = load_reward_model(tiny["model"], tokenizer)
    with torch.no_grad():
        model.score.weight.copy_(torch.as_tensor(head, dtype=torch.float32)[None])
    r_better = score(model, tokenizer, [p.prompt for p in pairs], [p.better for p in pairs])
    r_worse = score(model, tokenizer, [p.prompt for p in pairs], [p.worse for p in pairs])
    np.testing.assert_allclose(np.subtract(r_better, r_worse), (feats.better - feats.worse) @ head, atol=1e-3)

    diff = (feats.better - feats.worse)[:60]
    np.testing.assert_allclose(B.fit_head(diff, np.ones(60), 0.1), B.fit_head(diff, None, 0.1), atol=1e-6)
