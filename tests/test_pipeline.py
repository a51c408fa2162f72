"""`rlhf/train.py pipeline`: every stage feeds the next, finished stages are skipped, and the report holds the
figures the stages wrote (tiny models built from a config; each stage a real `rlhf/train.py` process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from fixtures import arithmetic_tokenizer, save_tiny_model, write_synthetic_export

from rlhf import pipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_pipeline_runs_every_stage_resumes_and_reports(tmp_path, capfd):
    model = save_tiny_model(tmp_path / "tiny", arithmetic_tokenizer(), layers=1, hidden=32, heads=2)
    train, test = write_synthetic_export(tmp_path / "data", n_prompts=24, wrong_per_prompt=1)
    small = {"max_steps": 2, "per_device_train_batch_size": 4, "device": "cpu", "max_length": 64}
    rl = {"max_steps": 1, "per_device_train_batch_size": 4, "device": "cpu", "response_length": 4}
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump({
        "model": model, "data": str(train), "output_dir": str(tmp_path / "run"), "seed": 3,
        "stages": {"reward": small, "dpo": small, "ppo": {**rl, "eval_prompts": 4}, "rloo": rl,
                   "evaluate": {"num_prompts": 4, "max_new_tokens": 4}},
    }))  # fmt: skip
    recipe = pipeline.load_recipe(recipe_path)
    report = pipeline.run(recipe)
    out = tmp_path / "run"
    # Every training and evaluation stage said what it would do before starting (its child process's stdout).
    said = capfd.readouterr().out
    chunks = {c.split(":")[0]: c for c in said.split("[pipeline] ")[1:]}
    for stage in ("reward", "dpo", "ppo", "rloo", "evaluate-dpo", "evaluate-ppo", "evaluate-rloo"):
        assert "[plan] " in chunks[stage], (stage, chunks[stage][-2000:])
    for stage in ("reward", "dpo", "ppo", "rloo", "evaluate-dpo", "evaluate-ppo", "evaluate-rloo"):
        assert (out / stage / "eval.json").exists(), stage
        assert report["stages"][stage]["peak_rss_mb"] > 50 and report["stages"][stage]["wall_s"] > 0
    # Each stage got the previous one's outputs and the export's held-out file.
    ppo_cfg = yaml.safe_load((out / "ppo" / "config.yaml").read_text())
    assert ppo_cfg["reward_model"] == str(out / "reward") and ppo_cfg["eval_data"] == str(test)
    reward_eval = json.loads((out / "reward" / "eval.json").read_text())
    r = report["reward"]
    assert r["accuracy"] == reward_eval["eval_accuracy"] and r["ci95"][0] <= r["accuracy"] <= r["ci95"][1]
    assert abs(r["longer_rule_accuracy"] + r["shorter_rule_accuracy"] - 1) < 1e-9
    assert r["longer_rule_accuracy"] == reward_eval["ruler_longer_accuracy"]  # the reward run's ruler, same pairs
    assert r["style_model_accuracy"] == reward_eval["ruler_style_accuracy"] and r["ruler_verdict"]
    dpo_eval = json.loads((out / "dpo" / "eval.json").read_text())
    assert report["dpo"]["ci95"] == dpo_eval["eval_accuracy_ci95"] and report["dpo"]["pairs"] == dpo_eval["eval_pairs"]
    assert set(report["policies"]) == {"dpo", "ppo", "rloo"}
    ev = json.loads((out / "evaluate-ppo" / "eval.json").read_text())
    assert report["policies"]["ppo"]["win_rate"] == ev["win_rate"]
    md = (out / "report.md").read_text()
    assert "pick the longer" in md and "| ppo |" in md and (out / "report.png").stat().st_size > 1000
    # A second run skips every finished stage.
    capfd.readouterr()
    pipeline.run(recipe)
    said = capfd.readouterr().out
    assert said.count("skipped") == 7 and "[pipeline] reward: " not in said.replace("reward: finished", "")


def test_recipe_errors_name_the_key(tmp_path, capsys):
    bad = tmp_path / "r.yaml"
    for body, needle in (({"data": "x", "stagez": {}}, "unknown key 'stagez'"),
                         ({"data": "x", "stages": {"ppo": {}}}, "need the 'reward' stage"),
                         ({"data": "x", "stages": {"sft2": {}}}, "unknown stage 'sft2'"),
                         ({"stages": {}}, "'data' is required"),
                         ({"data": "x", "stages": {"reward": {"max_stepz": 3}}}, "option 'max_stepz'")):  # fmt: skip
        bad.write_text(yaml.safe_dump(body))
        with pytest.raises(SystemExit) as e:
            pipeline.load_recipe(bad)
        assert e.value.code == 2 and needle in capsys.readouterr().err


def test_recipe_stage_may_set_trl_fields_the_project_never_names(tmp_path):
    recipe = tmp_path / "r.yaml"
    stages = {"reward": {"lr_scheduler_type": "cosine"}, "dpo": {"warmup_steps": 0.1, "max_grad_norm": 0.5}}
    recipe.write_text(yaml.safe_dump({"data": "x", "stages": stages}))
    assert pipeline.load_recipe(recipe)["stages"]["dpo"]["max_grad_norm"] == 0.5  # accepted, passed on as given


def test_shipped_hh_recipe_parses_and_points_at_the_shared_sample():
    recipe = pipeline.load_recipe(ROOT / "recipes" / "hh-smollm2.yaml")
    assert list(recipe["stages"]) == ["reward", "dpo", "ppo", "rloo", "evaluate"]
    assert recipe["data"].endswith("hh-rlhf-harmless-sample.jsonl.gz") and recipe["data_format"] == "hh"


def test_shipped_quick_recipe_parses_and_every_stage_is_capped():
    recipe = pipeline.load_recipe(ROOT / "recipes" / "quick.yaml")
    assert list(recipe["stages"]) == ["reward", "dpo", "ppo", "rloo", "evaluate"]
    for name in ("reward", "dpo", "ppo", "rloo"):  # a quick try never runs an epoch over the user's whole data
        assert recipe["stages"][name]["max_steps"] > 0, name


def test_data_flag_overrides_the_recipe_and_missing_data_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"data": "x.jsonl", "data_format": "hh", "stages": {"reward": {}}}))
    with pytest.raises(SystemExit) as e:
        pipeline.main(["--config", str(recipe)])
    assert e.value.code == 2 and "x.jsonl: no such file or folder" in capsys.readouterr().err
    export = tmp_path / "mine-train.parquet"
    export.write_bytes(b"")
    got = pipeline.recipe_from_args(["--config", str(recipe), "--data", str(export)])
    assert got["data"] == str(export) and got["data_format"] is None  # the recipe's "hh" was about its own data
    assert pipeline._guess_format(got["data"]) == "export"


def test_wilson_interval():
    from annotate.audit_stats import wilson  # the audit's interval, the one the report uses (pipeline.build_report)

    lo, hi = wilson(70, 100)
    assert 0.60 < lo < 0.61 and 0.78 < hi < 0.79
