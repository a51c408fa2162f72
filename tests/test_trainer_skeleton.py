"""rlhf/skeleton.py and the TRL door in rlhf/config.py + rlhf/common.py: any field of the command's TRL config is a
recipe key or flag, unknown ones exit 2 naming them, nothing is dropped silently, and --resume continues a killed run
on the same loss curve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fixtures import arithmetic_tokenizer, save_tiny_model, write_synthetic_export

from rlhf import train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("skeleton")
    model = save_tiny_model(root / "tiny", arithmetic_tokenizer(), layers=1, hidden=32, heads=2)
    data, _ = write_synthetic_export(root / "data", n_prompts=20, wrong_per_prompt=2)
    return model, str(data)


def _reward_argv(model: str, data: str, out: Path, *extra: str) -> list[str]:
    return ["reward", "--model", model, "--data", data, "--output-dir", str(out), "--device", "cpu", "--logging-steps",
            "1", "--per-device-train-batch-size", "4", "--learning-rate", "1e-3", *extra]  # fmt: skip


def _curve(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "loss" in r]
    assert len(steps) == len(set(steps)), f"a step logged twice: {steps}"  # one clean curve
    return {r["step"]: r for r in rows if "loss" in r}


def _assert_same_curve(got: dict[int, dict], want: dict[int, dict]) -> None:
    assert sorted(got) == sorted(want)
    for step, row in want.items():
        assert got[step]["loss"] == pytest.approx(row["loss"], rel=1e-4, abs=1e-6), step
        assert got[step]["learning_rate"] == pytest.approx(row["learning_rate"], rel=1e-4), step  # scheduler too


def test_a_recipe_and_flags_set_trl_fields_the_project_never_names(inputs, tmp_path):
    from rlhf.config import parse_config, save_config
    from rlhf.reward import RewardArgs, build_trainer

    model, data = inputs
    recipe = tmp_path / "recipe.yaml"
    # warmup_steps below 1 is a ratio of the run in transformers 5 (which dropped warmup_ratio). PyYAML reads an
    # unquoted 1e-6 as a string: the field's type converts it, as its flag would.
    recipe.write_text(f"model: {model}\ndata: {data}\nmax_steps: 2\nwarmup_steps: 0.25\nlr_scheduler_type: cosine\n"
                      "adam-epsilon: 1e-6\nmax_grad_norm: 0.5\n")  # fmt: skip
    flags = ["--max-grad-norm", "0.3", "--per-device-eval-batch-size", "3", "--output-dir", str(tmp_path / "run")]
    cfg = parse_config(RewardArgs, ["--config", str(recipe), "--device", "cpu", *flags])
    assert cfg.trl_overrides == {"warmup_steps": 0.25, "lr_scheduler_type": "cosine", "adam_epsilon": 1e-6,
                                 "max_grad_norm": 0.3, "per_device_eval_batch_size": 3}  # fmt: skip
    trainer, *_ = build_trainer(cfg)
    assert trainer.args.warmup_steps == 0.25 and trainer.args.lr_scheduler_type == "cosine"
    assert trainer.args.adam_epsilon == 1e-6 and trainer.args.max_grad_norm == 0.3  # the flag beat the recipe
    assert trainer.args.per_device_eval_batch_size == 3  # overrides what trl_args computes (the train batch, 4)
    trainer.create_optimizer_and_scheduler(num_training_steps=8)
    assert set(trainer.lr_scheduler.get_last_lr()) == {0.0}  # step 0 of a 2-step warm-up
    # The run record holds them as recipe keys: config.yaml parses back to the same config.
    save_config(cfg, tmp_path / "config.yaml")
    record = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert record["warmup_steps"] == 0.25 and record["lr_scheduler_type"] == "cosine" and "trl_overrides" not in record
    assert parse_config(RewardArgs, ["--config", str(tmp_path / "config.yaml")]) == cfg


def test_help_lists_trl_fields_in_their_own_group():
    from rlhf.config import build_parser
    from rlhf.dpo import DPOArgs

    text = build_parser(DPOArgs, prog="python rlhf/train.py dpo").format_help()
    ours, trl = text.split("\nTRL options:\n")
    assert "--beta" in ours and "--resume" in ours and "--warmup-steps" not in ours
    assert "--warmup-steps" in trl and "--lr-scheduler-type" in trl and "--max-grad-norm" in trl
    assert "--beta " not in trl and "--max-length " not in trl  # ours, translated by trl_args: listed once
    assert "--resume-from-checkpoint" not in text  # the Trainer ignores it: --resume is the way


@pytest.mark.parametrize(
    "recipe, argv, named",
    [
        ({"warmup_ratio": 0.1}, [], "unknown option 'warmup_ratio' (did you mean 'warmup_steps'?)"),
        ({"resume_from_checkpoint": "x"}, [], "unknown option 'resume_from_checkpoint' (use --resume)"),
        ({}, ["--warmup-ratio", "0.1"], "unrecognized arguments: --warmup-ratio"),
        ({}, ["--num-generations", "4"], "unrecognized arguments: --num-generations"),  # RLOOConfig's, not DPO's
    ],
)
def test_unknown_keys_and_flags_exit_2_naming_them(tmp_path, capsys, recipe, argv, named):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"data": "x.parquet", **recipe}))
    with pytest.raises(SystemExit) as e:
        train.main(["dpo", "--config", str(path), *argv])
    assert e.value.code == 2
    assert named in capsys.readouterr().err


def test_trl_args_refuses_what_a_trl_config_does_not_declare(monkeypatch):
    from trl import RewardConfig

    from rlhf import common
    from rlhf.reward import RewardArgs
    from rlhf.rloo import RLOOArgs, _trl_config

    with pytest.raises(TypeError, match="RewardConfig has no field not_a_field"):
        common.trl_args(RewardArgs(), RewardConfig, not_a_field=1)
    with pytest.raises(TypeError, match="has no field warmup_ratio"):  # an override that bypassed the parser
        common.trl_args(RewardArgs(trl_overrides={"warmup_ratio": 0.1}), RewardConfig)
    # The one listed exclusion: RLOOConfig has no max_length (rloo.py uses it to drop long prompts).
    assert not hasattr(_trl_config(RLOOArgs()), "max_length")
    # An exclusion TRL has made stale (the class declares the field now) fails rather than hiding the field.
    monkeypatch.setitem(common.NOT_DECLARED, "RewardConfig", {"max_length"})
    with pytest.raises(TypeError, match=r"now declares \['max_length'\]"):
        common.trl_args(RewardArgs(), RewardConfig)


def test_resume_without_a_checkpoint_exits_2(inputs, tmp_path, capsys):
    model, data = inputs
    with pytest.raises(SystemExit) as e:
        train.main(_reward_argv(model, data, tmp_path / "empty", "--max-steps", "2", "--resume"))
    assert e.value.code == 2 and "--resume: no checkpoint in" in capsys.readouterr().err


def test_resume_continues_a_killed_run_on_the_same_loss_curve(inputs, tmp_path):
    model, data = inputs
    steps = ["--max-steps", "100", "--save-steps", "5"]
    whole = tmp_path / "whole"
    assert train.main(_reward_argv(model, data, whole, *steps)) == 0
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "rlhf/train.py", *_reward_argv(model, data, out, *steps)],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 300  # the child imports torch and TRL on a shared box first
        while proc.poll() is None and time.monotonic() < deadline:
            if any((p / "trainer_state.json").exists() for p in out.glob("checkpoint-*")):
                os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up: the hard case
                break
            time.sleep(0.02)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-2000:]
    assert not (out / "eval.json").exists()
    # The killed run's data pin is kept; --data may be left out.
    argv = [a for a in _reward_argv(model, data, out, *steps) if a != data and a != "--data"]
    assert train.main([*argv, "--resume"]) == 0
    _assert_same_curve(_curve(out), _curve(whole))
    assert yaml.safe_load((out / "config.yaml").read_text())["data"] == data
    got, want = (json.loads((d / "eval.json").read_text()) for d in (out, whole))
    assert got["eval_accuracy"] == want["eval_accuracy"]


def test_resume_restores_the_joint_length_weight(inputs, tmp_path):
    """The joint length term is no model weight: it travels in the checkpoint's trainer_state.json. A run cut back
    to its first checkpoint (later files removed, as a kill would leave it) ends where the whole run ended."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    model, data = inputs
    for name in ("train", "test"):  # chosen is the longer answer: the length term has something to take up
        rows = pq.read_table(data.replace("-train.", f"-{name}.")).to_pylist()
        for r in rows:
            r["chosen"][0]["content"] = "= = = " + r["chosen"][0]["content"]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"prefs-{name}.parquet")
    out = tmp_path / "run"
    argv = _reward_argv(model, str(tmp_path / "prefs-train.parquet"), out, "--max-steps", "6", "--save-steps", "3",
                        "--length-debias", "joint", "--length-lr", "0.1")  # fmt: skip
    assert train.main(argv) == 0
    whole, weight = _curve(out), json.loads((out / "eval.json").read_text())["length_weight_per_token"]
    assert weight != 0
    shutil.rmtree(out / "checkpoint-6")
    (out / "eval.json").unlink()
    assert train.main([*argv, "--resume"]) == 0
    _assert_same_curve(_curve(out), whole)
    resumed = json.loads((out / "eval.json").read_text())["length_weight_per_token"]
    assert resumed == pytest.approx(weight, rel=1e-4)
