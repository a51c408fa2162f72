"""`python rlhf/train.py`: instant --help, YAML recipe + flag override, and what every run leaves behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures import arithmetic_tokenizer, save_tiny_model, write_synthetic_export

from rlhf import train

ROOT = Path(__file__).resolve().parents[1]


def test_help_lists_common_and_trl_flags_and_modules_load_without_torch():
    for cmd in ("sft", "reward", "dpo"):
        done = subprocess.run(
            [sys.executable, "rlhf/train.py", cmd, "--help"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        for flag in ("--model", "--data", "--output-dir", "--max-steps", "--per-device-train-batch-size"):
            assert flag in done.stdout
        for flag in ("--learning-rate", "--seed", "--max-length", "--report-to", "--device", "--config"):
            assert flag in done.stdout
        assert "TRL options" in done.stdout and "--lr-scheduler-type" in done.stdout  # TRL's own fields, grouped
    # Importing the commands loads no training stack, nor does building their parsers: TRL's options come from
    # rlhf/trl_options.json (checked below), so --help never waits for torch. A run imports TRL when it starts.
    probe = (
        "import sys, rlhf.train, rlhf.reward, rlhf.dpo, rlhf.sft, rlhf.data, rlhf.common, rlhf.rloo, rlhf.grpo\n"
        "from rlhf.config import build_parser\n"
        "for cls in (rlhf.reward.RewardArgs, rlhf.dpo.DPOArgs, rlhf.sft.SFTArgs, rlhf.rloo.RLOOArgs, "
        "rlhf.grpo.GRPOArgs): build_parser(cls)\n"
        "print(any(m in sys.modules for m in ('torch', 'trl', 'transformers')))"
    )
    assert (
        subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        == "False"
    )


def test_trl_options_file_is_what_the_installed_trl_declares():
    """rlhf/trl_options.json lists TRL's fields for the parsers without importing TRL. After a TRL or transformers
    upgrade this fails: rewrite the file with `python -m rlhf.config`."""
    from rlhf import config
    from rlhf.dpo import DPOArgs
    from rlhf.grpo import GRPOArgs
    from rlhf.reward import RewardArgs
    from rlhf.rloo import RLOOArgs
    from rlhf.sft import SFTArgs

    listing = json.loads(config.TRL_OPTIONS_FILE.read_text())
    assert listing["versions"] == {p: config._installed(p) for p in config.PINNED}, "run python -m rlhf.config"
    names = {c.trl_config_class for c in (SFTArgs, RewardArgs, DPOArgs, RLOOArgs, GRPOArgs)}
    assert names <= set(listing["classes"])
    for name, options in listing["classes"].items():
        live = config.trl_class_options(config.trl_config_class(object, name))  # the class itself: read live
        assert options == live, f"{name}: run python -m rlhf.config"


def test_recipe_with_flag_override_writes_config_metrics_and_card(tmp_path):
    model = save_tiny_model(tmp_path / "tiny", arithmetic_tokenizer(), layers=1, hidden=32, heads=2)
    data, _ = write_synthetic_export(tmp_path / "data", n_prompts=20, wrong_per_prompt=2)
    recipe = tmp_path / "recipe.yaml"
    out = tmp_path / "run"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model": model,
                "data": str(data),
                "output_dir": str(out),
                "max_steps": 50,
                "learning_rate": 1e-3,
                "per_device_train_batch_size": 4,
                "logging_steps": 2,
                "seed": 7,
            }
        )
    )
    assert train.main(["reward", "--config", str(recipe), "--max-steps", "4", "--device", "cpu"]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["max_steps"] == 4 and cfg["learning_rate"] == 1e-3 and cfg["seed"] == 7 and cfg["device"] == "cpu"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [2, 4]
    assert lines[-1]["split"] == "eval" and 0 <= lines[-1]["eval_accuracy"] <= 1
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "eval_accuracy" in card and "max_steps: 4" in card
    assert json.loads((out / "eval.json").read_text())["eval_accuracy"] == lines[-1]["eval_accuracy"]


def test_unknown_recipe_key_and_missing_data_fail_clearly(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_stepz: 3\n")
    with pytest.raises(SystemExit):
        train.main(["dpo", "--config", str(recipe)])
    assert "unknown option 'max_stepz'" in capsys.readouterr().err
    assert train.main(["sft", "--output-dir", str(tmp_path / "x")]) == 2
    assert "--data is required" in capsys.readouterr().err


def test_shipped_recipes_parse():
    from rlhf.config import parse_config
    from rlhf.dpo import DPOArgs
    from rlhf.reward import RewardArgs
    from rlhf.sft import SFTArgs

    classes = {"sft": SFTArgs, "reward": RewardArgs, "dpo": DPOArgs}
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        cmd = path.stem.split("-")[0]
        if cmd in classes:
            cfg = parse_config(classes[cmd], ["--config", str(path)])
            assert cfg.output_dir
    for path in sorted((ROOT / "recipes" / "accelerate").glob("*.yaml")):
        assert "distributed_type" in yaml.safe_load(path.read_text())


@pytest.mark.parametrize("method", ["dpo", "reward"])
def test_two_processes_train_data_parallel(tmp_path, method):
    """The same command under torchrun (what `accelerate launch` runs on GPUs), two CPU processes over gloo: each
    rank sees half the batches, and the precomputed reference log-probs rank 0 caches are found by rank 1."""
    model = save_tiny_model(tmp_path / "tiny", arithmetic_tokenizer(), layers=1, hidden=32, heads=2)
    data, _ = write_synthetic_export(tmp_path / "data", test_fraction=0.2, n_prompts=40, wrong_per_prompt=4)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "rlhf/train.py", method,
           "--model", model, "--data", str(data), "--output-dir", str(out), "--max-steps", "4",
           "--per-device-train-batch-size", "4", "--learning-rate", "1e-3", "--logging-steps", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    assert len(train_rows) == 4  # one log per step, written once (rank 0), not once per rank
    ev = json.loads((out / "eval.json").read_text())
    # dpo trains on the pairs --max-steps draws (rlhf.common.pairs_for_steps: 4 x 4 x 2 ranks), reward on all
    pairs = ev.get("train_pairs_used", ev["train_pairs"])
    assert pairs == 32 if method == "dpo" else pairs > 32
    # 4 steps x 4 pairs x 2 ranks: twice the data a single process would have seen.
    assert train_rows[-1]["epoch"] == pytest.approx(4 * 4 * 2 / pairs, rel=0.05)
    assert (out / "model.safetensors").exists() and (out / "README.md").exists()


def test_a_run_on_a_store_names_the_store_version_and_that_version_reads_the_same_pairs(tmp_path):
    from annotate.__main__ import main as annotate_main
    from annotate.schema import new_comparison
    from annotate.store import ComparisonStore
    from rlhf.data import load_preferences

    model = save_tiny_model(tmp_path / "tiny", arithmetic_tokenizer(), layers=1, hidden=32, heads=2)
    data, _ = write_synthetic_export(tmp_path / "data", n_prompts=12, wrong_per_prompt=1)
    store = tmp_path / "votes"
    assert annotate_main(["import", str(data), "--format", "trl", "--store", str(store)]) == 0
    out = tmp_path / "run"
    args = ["reward", "--model", model, "--data", str(store), "--output-dir", str(out), "--max-steps", "2",
            "--device", "cpu", "--per-device-train-batch-size", "4"]  # fmt: skip
    assert train.main(args) == 0
    pinned = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert pinned.startswith(f"{store}@")
    trained_on = load_preferences(pinned).to_list()
    late = new_comparison(prompt_id="late", prompt=[{"role": "user", "content": "1+1"}], response_a_id="a",
                          response_a="2", response_b_id="b", response_b="3", choice="a", annotator="late")  # fmt: skip
    with ComparisonStore(store) as s:  # later votes: a new version; the pinned one still reads the same pairs
        s.append(late)
    assert load_preferences(pinned).to_list() == trained_on
    assert len(load_preferences(str(store))) == len(trained_on) + 1


def test_the_plan_is_printed_before_training(tmp_path, capsys):
    model = save_tiny_model(tmp_path / "tiny", arithmetic_tokenizer(), layers=1, hidden=32, heads=2)
    data, _ = write_synthetic_export(tmp_path / "data", n_prompts=20, wrong_per_prompt=2)
    args = ["reward", "--model", model, "--data", str(data), "--output-dir", str(tmp_path / "run"), "--device", "cpu",
            "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "2"]  # fmt: skip
    assert train.main(args) == 0
    out = capsys.readouterr().out
    pairs = json.loads((tmp_path / "run" / "eval.json").read_text())["train_pairs"]
    steps = -(-pairs // 8)  # one epoch of 4 x 2 pairs per optimizer step
    assert f"[plan] {steps} optimizer steps x 8 pairs" in out
    assert out.index("[plan]") < out.index("[reward] held-out accuracy")


def test_cpu_threads_leave_the_busy_cores_alone():
    """Unset OMP_NUM_THREADS: torch gets the cores other work leaves free (issue 17: all threads on a busy 2-core
    machine made generation 8x slower than one), never fewer than one, never more than the cores."""
    from rlhf.train import cpu_threads

    assert cpu_threads(cores=2, load=0.1) == 2  # quiet: every core
    assert cpu_threads(cores=2, load=1.2) == 1
    assert cpu_threads(cores=2, load=6.5) == 1  # overloaded: still one
    assert cpu_threads(cores=16, load=3.0) == 13
    assert 1 <= cpu_threads() <= len(__import__("os").sched_getaffinity(0))


def test_the_threads_notice_waits_for_the_first_model(tmp_path, monkeypatch, capsys):
    """The notice rlhf/train.py leaves for a busy machine is printed when the first model loads, once: a mistake
    caught before that (rlhf/preflight.py) stays a single line."""
    from rlhf.models import resolve_model

    monkeypatch.setenv("PREFKIT_THREADS_NOTICE", "[threads] 1 of 2 CPU threads")
    assert resolve_model(str(tmp_path)) == str(tmp_path)
    resolve_model(str(tmp_path))
    assert capsys.readouterr().err.count("[threads] 1 of 2 CPU threads") == 1
