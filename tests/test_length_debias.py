"""--length-debias on a set where length and quality are confounded in training but not in the held-out split.

Quality here is a word a tiny model learns reliably ("answer 7" beats "the 7"), but rater noise hides it in a
quarter of the training pairs; the confound is padding: in training the preferred response is the longer one in
~85% of pairs (a stronger cue than the word), in held-out pairs 50%. A reward model trained
as is learns length; with resample or joint debiasing its held-out reward follows length less, at no real cost in
held-out accuracy.
"""

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fixtures import arithmetic_tokenizer, save_tiny_model, synthetic_arithmetic

from rlhf import train

pytestmark = pytest.mark.slow


def padded(rows: list[dict], p_chosen_longer: float, p_marked: float, rng: random.Random) -> list[dict]:
    """Pad one side of each pair; the quality word marks the chosen side in a share p_marked of pairs (noise)."""
    out = []
    for r in rows:
        long, short = rng.randint(3, 6), rng.randint(0, 2)
        kc, kr = (long, short) if rng.random() < p_chosen_longer else (short, long)
        wc, wr = ("answer", "the") if rng.random() < p_marked else ("the", "answer")
        good, bad = r["chosen"][0]["content"], r["rejected"][0]["content"]
        out.append({**r, "chosen": [{"role": "assistant", "content": "= " * kc + f"{wc} {good}"}],
                    "rejected": [{"role": "assistant", "content": "= " * kr + f"{wr} {bad}"}]})  # fmt: skip
    return out


def write_confounded_set(root: Path) -> str:
    """ROOT/data/prefs-{train,test}.parquet and a tiny model at ROOT/tiny (returned); bench/length_debias_seeds.py
    reuses this, so its figures describe exactly this set."""
    rng = random.Random(0)
    rows = synthetic_arithmetic(n_prompts=100, wrong_per_prompt=4, seed=0)
    test_ids = {r["prompt_id"] for r in rows[-80:]}  # the last 20 prompts (4 pairs each)
    train_rows = padded([r for r in rows if r["prompt_id"] not in test_ids], 0.85, 0.75, rng)
    test_rows = padded([r for r in rows if r["prompt_id"] in test_ids], 0.5, 1.0, rng)
    (root / "data").mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train_rows), ("test", test_rows)):
        pq.write_table(pa.Table.from_pylist(part), root / f"data/prefs-{name}.parquet")
    return save_tiny_model(root / "tiny", arithmetic_tokenizer(), layers=1, hidden=32, heads=2)


def train_argv(model: str, root: Path, mode: str, *extra: str) -> list[str]:
    return ["reward", "--model", model, "--data", str(root / "data/prefs-train.parquet"), "--max-steps", "150",
            "--output-dir", str(root / mode), "--learning-rate", "3e-3", "--per-device-train-batch-size", "16",
            "--logging-steps", "50", "--length-debias", mode, *extra]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("debias")
    model = write_confounded_set(root)
    results = {}
    for mode in ("none", "resample", "joint"):
        assert train.main(train_argv(model, root, mode)) == 0
        results[mode] = json.loads((root / mode / "eval.json").read_text())
    return results


def test_training_pairs_are_confounded(runs):
    share = runs["none"]["train_chosen_longer_share"]
    assert 0.8 < share < 0.9
    assert runs["resample"]["train_chosen_longer_share_resampled"] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("mode", ["resample", "joint"])
def test_debias_lowers_length_correlation(runs, mode):
    plain, debiased = runs["none"], runs[mode]
    assert debiased["length_debias"] == mode
    print(mode, {k: (plain[k], debiased[k]) for k in ("eval_accuracy", "eval_length_spearman")})
    assert debiased["eval_length_spearman"] < plain["eval_length_spearman"] - 0.1


def test_resample_keeps_heldout_accuracy(runs):
    # Only resample is held to this. joint's decorrelation penalty also fights the quality word, which is itself
    # correlated with length in these training pairs: over seeds 42, 1, 2 it lost 0 to 0.15 of held-out accuracy
    # (BENCHMARKS.md, "Length debiasing"), so asserting parity for it would only hold for a lucky seed.
    assert runs["resample"]["eval_accuracy"] >= runs["none"]["eval_accuracy"] - 0.02


def test_joint_reports_the_length_term_it_dropped(runs):
    joint = runs["joint"]
    assert joint["length_weight_per_token"] > 0  # longer was preferred in training: the term took that up
    # With the term added back the held-out reward follows length more than the reward alone does.
    assert joint["eval_length_spearman_with_length_term"] > joint["eval_length_spearman"]
