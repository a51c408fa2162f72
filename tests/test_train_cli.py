"""`python rlhf/train.py`: instant --help, YAML recipe + flag override, and what every run leaves behind."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rlhf import train
from rlhf.data import arithmetic_tokenizer, write_synthetic_export
from rlhf.models import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]


def test_help_is_instant_and_lists_common_flags():
    for cmd in ("sft", "reward", "dpo"):
        t0 = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "rlhf/train.py", cmd, "--help"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        elapsed = time.perf_counter() - t0
        for flag in ("--model", "--data", "--output-dir", "--max-steps", "--per-device-train-batch-size"):
            assert flag in done.stdout
        for flag in ("--learning-rate", "--seed", "--max-length", "--report-to", "--device", "--config"):
            assert flag in done.stdout
        # Heavy libraries are imported only when training starts (a loose bound: the box is shared).
        assert elapsed < 10, f"{cmd} --help took {elapsed:.1f}s"
    probe = (
        "import sys, rlhf.train, rlhf.reward, rlhf.dpo, rlhf.sft, rlhf.data, rlhf.common\n"
        "print(any(m in sys.modules for m in ('torch', 'trl', 'transformers')))"
    )
    assert (
        subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        == "False"
    )


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
    with pytest.raises(SystemExit, match="--data is required"):
        train.main(["sft", "--output-dir", str(tmp_path / "x")])


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
