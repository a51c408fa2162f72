"""--length-debias on a set where length and quality are confounded in training but not in the held-out split.

Quality here is a word a tiny model learns reliably ("answer 7" beats "the 7"), but rater noise hides it in a
quarter of the training pairs; the confound is padding: in training the preferred response is the longer one in
~85% of pairs (a stronger cue than the word), in held-out pairs 50%. A reward model trained
as is learns length, and the length ruler flags it; with resample, joint, odin or poe debiasing its held-out reward
follows length less. odin's dropped length head follows length closely; the quality head it keeps does not.
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
MODES = ("none", "resample", "joint", "odin", "poe")


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
    for mode in MODES:
        assert train.main(train_argv(model, root, mode)) == 0
        results[mode] = json.loads((root / mode / "eval.json").read_text())
        results[mode]["dir"] = root / mode
    return results


def test_training_pairs_are_confounded(runs):
    share = runs["none"]["train_chosen_longer_share"]
    assert 0.8 < share < 0.9
    assert runs["resample"]["train_chosen_longer_share_resampled"] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("mode", ["resample", "joint", "odin", "poe"])
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


def test_odin_keeps_the_quality_head_and_drops_the_length_head(runs):
    odin = runs["odin"]
    print({k: odin[k] for k in ("eval_accuracy", "eval_length_spearman", "eval_length_head_spearman")})
    # On held-out pairs (length balanced, unseen prompts) the dropped head tracks length, the kept one does not.
    assert odin["eval_length_head_spearman"] > 0.6
    assert abs(odin["eval_length_spearman"]) < 0.3
    assert odin["eval_length_head_spearman"] - odin["eval_length_spearman"] > 0.5


def test_odin_and_poe_save_a_plain_reward_model_that_score_reads(runs):
    from safetensors.torch import load_file

    from rlhf.data import load_preferences
    from rlhf.models import load_tokenizer
    from rlhf.reward import heldout_report, load_reward_model

    plain = set(load_file(runs["none"]["dir"] / "model.safetensors"))
    for mode in ("odin", "poe"):
        out = runs[mode]["dir"]
        weights = load_file(out / "model.safetensors")
        assert set(weights) == plain  # no extra head or bias-model weights: dropped at inference
        assert weights["score.weight"].shape[0] == 1
        tok = load_tokenizer(str(out))
        model = load_reward_model(str(out), tok)
        assert model.config.num_labels == 1
        again = heldout_report(model, tok, load_preferences(out.parent / "data/prefs-test.parquet"))
        # rlhf.reward.score on the reloaded checkpoint gives the run's own held-out figures.
        assert again["eval_accuracy"] == pytest.approx(runs[mode]["eval_accuracy"])
        assert again["eval_length_spearman"] == pytest.approx(runs[mode]["eval_length_spearman"], abs=1e-6)


def test_poe_bias_model_takes_up_length(runs):
    poe = runs["poe"]
    # Started at the ruler's style-only fit on the training pairs, where the chosen response is mostly the longer.
    assert poe["poe_bias_weights"]["length"] > 0.5
    assert poe["poe_bias_weights"]["length"] == pytest.approx(poe["ruler_style_weights"]["length"], rel=0.5)


def test_length_ruler_flags_the_plain_model_and_not_the_debiased_ones(runs):
    # At this seed. Over seeds 42, 1, 2, 3, 4 the ruler flagged none 4 times of 5 (seed 3: accuracy 0.66, just
    # clear of "pick the longer" at 0.54), odin 1 of 5 and poe never; tests/test_length_ruler.py has a set where
    # the flag does not depend on the seed.
    for mode in MODES:
        r = runs[mode]
        # Held-out pairs are length balanced: every rule is near chance.
        assert 0.4 < r["ruler_longer_accuracy"] < 0.6 and 0.4 < r["ruler_style_accuracy"] < 0.6
    none = runs["none"]
    assert none["ruler_flag"] is True
    assert none["ruler_verdict"].startswith("this reward model may be measuring length")
    assert "this reward model may be measuring length" in (none["dir"] / "README.md").read_text()
    for mode in ("odin", "poe"):
        assert runs[mode]["ruler_flag"] is False, runs[mode]["ruler_verdict"]


def test_odin_under_lora_trains_the_heads_copy_and_saves_one_output(runs, tmp_path):
    from safetensors.torch import load_file

    root = runs["none"]["dir"].parent
    argv = train_argv(str(root / "tiny"), root, "odin", "--lora-r", "4", "--max-steps", "20")
    argv[argv.index("--output-dir") + 1] = str(tmp_path / "odin-lora")
    assert train.main(argv) == 0
    weights = load_file(tmp_path / "odin-lora/model.safetensors")
    assert weights["score.weight"].shape[0] == 1 and not any("lora" in k for k in weights)
    assert json.loads((tmp_path / "odin-lora/eval.json").read_text())["eval_length_head_spearman"] is not None


def test_poe_bias_model_rides_through_a_checkpoint():
    import torch
    from transformers import TrainerState

    from rlhf.reward_debias import TermState

    saved = TermState(torch.nn.Parameter(torch.tensor([1.5, -0.25, 0.0])), "bias_v")
    state = TrainerState(stateful_callbacks={"TermState": saved.state()})
    fresh = TermState(torch.nn.Parameter(torch.zeros(3)), "bias_v")
    fresh.on_train_begin(None, state, None)  # what --resume does when training begins
    assert fresh.param.tolist() == [1.5, -0.25, 0.0]
