"""`python rlhf/train.py pipeline --config recipes/hh-smollm2.yaml`: one experiment, data to report, in one command.

Stages, each feeding the next: data (import HH/TRL data or a store, export with a split by prompt) -> reward ->
dpo -> ppo -> rloo (against that reward model) -> evaluate (each policy against the starting model, judged by the
reward model, length-controlled). Every stage runs as its own `rlhf/train.py` process with a config written next to
its outputs (`OUT/configs/STAGE.yaml`); a stage whose `eval.json` exists is finished and skipped, so a pipeline that
stopped resumes where it stopped (delete a stage's folder to run it again).

The report (`report.md`, `report.json`, `report.png`) puts side by side: the reward model's held-out accuracy with
a 95% Wilson interval next to the accuracy of the "pick the longer" and "pick the shorter" rules on the same pairs
(a reward model that is no better than the longer rule learned length, not preference), the reward-length
correlation, DPO's implicit-reward accuracy, and for each policy the reward model's win rate over the reference,
its length-controlled win rate, the mean length change and the KL to the reference where the method measures it;
plus wall time and peak resident memory of every stage.

Recipe keys: model, data, data_format (hh | trl | store | export; guessed from the path when absent), output_dir,
test_fraction, seed, and `stages`: a mapping from stage name to the options of that command (the keys of
`rlhf/train.py STAGE --help`). Stages run in the order reward, dpo, ppo, rloo, evaluate; leave one out to skip it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

TRAIN_PY = Path(__file__).resolve().parent / "train.py"
ORDER = ("reward", "dpo", "ppo", "rloo")
POLICIES = ("dpo", "ppo", "rloo")


def _fail(message: str) -> SystemExit:
    print(f"error: {message}", file=sys.stderr)
    return SystemExit(2)


def load_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe, checked up front: unknown keys and stages are errors naming them (exit 2)."""
    path = Path(path)
    if not path.exists():
        raise _fail(f"{path}: no such recipe")
    recipe = yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise _fail(f"{path}: expected a mapping")
    known = {"model", "data", "data_format", "output_dir", "test_fraction", "seed", "stages"}
    for key in recipe:
        if key not in known:
            raise _fail(f"{path}: unknown key '{key}' (known: {', '.join(sorted(known))})")
    stages = recipe.setdefault("stages", {name: {} for name in (*ORDER, "evaluate")})
    for name, options in stages.items():
        if name not in (*ORDER, "evaluate"):
            raise _fail(f"{path}: unknown stage '{name}' (stages: {', '.join((*ORDER, 'evaluate'))})")
        if options is not None and not isinstance(options, dict):
            raise _fail(f"{path}: stage '{name}': expected a mapping of options")
        stages[name] = options or {}
    if not recipe.get("data"):
        raise _fail(f"{path}: 'data' is required (HH or TRL JSONL, a store, or an export)")
    for name, options in stages.items():  # a typo fails now, not after the stages before it trained for an hour
        fields = _config_fields(name)
        for key in options:
            if key.replace("-", "_") not in fields:
                raise _fail(f"{path}: stage '{name}': unknown option '{key}' (see rlhf/train.py {name} --help)")
    needs_reward = [s for s in ("ppo", "rloo", "evaluate") if s in stages]
    if needs_reward and "reward" not in stages:
        raise _fail(f"{path}: stages {needs_reward} need the 'reward' stage")
    recipe.setdefault("model", "default")
    recipe.setdefault("output_dir", "runs/pipeline")
    recipe.setdefault("test_fraction", 0.1)
    recipe.setdefault("seed", 0)
    base = path.parent
    data = Path(recipe["data"])
    if not data.is_absolute() and not data.exists() and (base / data).exists():
        recipe["data"] = str(base / data)  # relative to the recipe when not to the working folder
    return recipe


def _config_fields(stage: str) -> set[str]:
    import importlib

    module, cls = {"reward": ("rlhf.reward", "RewardArgs"), "dpo": ("rlhf.dpo", "DPOArgs"),
                   "ppo": ("rlhf.ppo", "PPOArgs"), "rloo": ("rlhf.rloo", "RLOOArgs"),
                   "evaluate": ("rlhf.evaluate", "EvalArgs")}[stage]  # fmt: skip
    from rlhf.config import recipe_keys

    return recipe_keys(getattr(importlib.import_module(module), cls))  # with TRL's own fields where a TRL trainer runs


def _guess_format(data: str) -> str:
    p = Path(data.split("@")[0])
    if p.is_dir():
        return "store"
    if p.suffix == ".parquet" or "-train." in p.name:
        return "export"
    return "hh"


# -- running a stage ---------------------------------------------------------------------------------------------
def run_stage(name: str, argv: list[str], out: Path, log: dict[str, Any]) -> None:
    """Run one `python ...` command as a child process and record its wall time and peak resident memory (the
    child's own rusage, so stages never blur together)."""
    print(f"[pipeline] {name}: {' '.join(argv[1:])}", flush=True)
    t = time.perf_counter()
    proc = subprocess.Popen(argv, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    log[name] = {"wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "exit": proc.returncode}
    (out / "stages.json").write_text(json.dumps(log, indent=2) + "\n")
    if proc.returncode != 0:
        raise _fail(f"stage '{name}' failed with exit code {proc.returncode}; fix it and run the pipeline again")


def _stage_config(out: Path, name: str, values: dict[str, Any]) -> Path:
    path = out / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def prepare_data(recipe: dict[str, Any], out: Path, log: dict[str, Any]) -> tuple[str, str | None]:
    """(train file, held-out file): an export given as is, else import + export with a split by prompt."""
    data, fmt = str(recipe["data"]), recipe.get("data_format") or _guess_format(str(recipe["data"]))
    if fmt == "export":
        from rlhf.data import heldout_path

        return data, heldout_path(data, None)
    prefs = out / "data" / "prefs.parquet"
    train, test = prefs.with_name("prefs-train.parquet"), prefs.with_name("prefs-test.parquet")
    if train.exists() and test.exists():
        print(f"[pipeline] data: {train} exists, skipped")
        return str(train), str(test)
    store = data
    if fmt in ("hh", "trl"):
        store = str(out / "store")
        cmd = [sys.executable, "-m", "annotate", "import", data, "--format", fmt, "--store", store]
        run_stage("import", cmd, out, log)
    elif fmt != "store":
        raise _fail(f"data_format: expected hh, trl, store or export, got {fmt!r}")
    frac = str(recipe["test_fraction"])
    cmd = [sys.executable, "-m", "annotate", "export", "--store", store, "--out", str(prefs), "--test-fraction", frac,
           "--seed", str(recipe["seed"])]  # fmt: skip
    run_stage("export", cmd, out, log)
    return str(train), str(test)


def run(recipe: dict[str, Any]) -> dict[str, Any]:
    """Run every stage not yet finished, then write the report. Returns the report."""
    out = Path(recipe["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "stages.json"
    log: dict[str, Any] = json.loads(log_path.read_text()) if log_path.exists() else {}
    train, test = prepare_data(recipe, out, log)
    stages, model, seed = recipe["stages"], recipe["model"], recipe["seed"]
    for name in ORDER:
        if name not in stages:
            continue
        values = {"model": model, "data": train, "eval_data": test, "output_dir": str(out / name), "seed": seed}
        if name in ("ppo", "rloo"):
            values["reward_model"] = str(out / "reward")
        values.update(stages[name])
        if (out / name / "eval.json").exists():
            print(f"[pipeline] {name}: finished earlier ({out / name / 'eval.json'}), skipped")
            continue
        run_stage(name, [sys.executable, str(TRAIN_PY), name, "--config", str(_stage_config(out, name, values))], out,
                  log)  # fmt: skip
    if "evaluate" in stages:
        for policy in (p for p in POLICIES if p in stages):
            name = f"evaluate-{policy}"
            values = {"policy": str(out / policy), "reference": model, "reward_model": str(out / "reward"),
                      "prompts": test or train, "output_dir": str(out / name), "seed": seed,
                      # the starting model answers the same prompts for every policy: generate that once
                      "reference_answers": str(out / "reference-answers.json"),
                      **stages["evaluate"]}  # fmt: skip
            if (out / name / "eval.json").exists():
                print(f"[pipeline] {name}: finished earlier, skipped")
                continue
            cfg = _stage_config(out, name, values)
            run_stage(name, [sys.executable, str(TRAIN_PY), "evaluate", "--config", str(cfg)], out, log)
    report = build_report(recipe, out, train, test, log)
    write_report(report, out)
    return report


# -- the report --------------------------------------------------------------------------------------------------
def length_rules(reward: dict[str, Any]) -> dict[str, Any]:
    """The length ruler next to the reward model, as the reward run measured it on exactly the pairs it scored
    (annotate/audit_ruler.py). Recomputing it here on the held-out file would score other pairs (the run drops
    those over its max length), so a run without a ruler shows none."""
    ruler = {k.removeprefix("ruler_"): v for k, v in reward.items() if k.startswith("ruler_")}
    keys = {"longer_rule_accuracy": "longer_accuracy", "shorter_rule_accuracy": "shorter_accuracy",
            "style_model_accuracy": "style_accuracy", "ruler_flag": "flag", "ruler_verdict": "verdict"}  # fmt: skip
    return {ours: ruler.get(theirs) for ours, theirs in keys.items()}


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def build_report(recipe: dict[str, Any], out: Path, train: str, test: str | None, log: dict) -> dict[str, Any]:
    from annotate.audit_stats import wilson  # scipy: not for `--help` or a recipe mistake

    report: dict[str, Any] = {"recipe": recipe, "train": train, "heldout": test, "stages": log}
    reward = _read(out / "reward" / "eval.json")
    if reward:
        acc, n = reward.get("eval_accuracy"), int(reward.get("eval_pairs") or 0)
        lo, hi = wilson(acc * n, n) if acc is not None else (None, None)
        report["reward"] = {"accuracy": acc, "ci95": [lo, hi], "pairs": n,
                            "length_spearman": reward.get("eval_length_spearman"),
                            "length_pearson": reward.get("eval_length_pearson"),
                            **length_rules(reward)}  # fmt: skip
    dpo = _read(out / "dpo" / "eval.json")
    if dpo:
        report["dpo"] = {  # the interval as the DPO run computed it (rlhf.dpo): a few pairs say how few
            "implicit_reward_accuracy": dpo.get("eval_accuracy"),
            "ci95": dpo.get("eval_accuracy_ci95"),
            "pairs": int(dpo.get("eval_pairs") or 0),
            "margin": dpo.get("eval_margin"),
        }
    report["policies"] = {}
    for policy in POLICIES:
        ev, run_eval = _read(out / f"evaluate-{policy}" / "eval.json"), _read(out / policy / "eval.json")
        if not ev:
            continue
        report["policies"][policy] = {
            "win_rate": ev.get("win_rate"),
            "win_rate_length_controlled": ev.get("win_rate_length_controlled"),
            "win_rate_length_matched": ev.get("win_rate_length_matched"),
            "length_change": ev.get("length_change"),
            "prompts": ev.get("pairs"),
            "kl": (run_eval or {}).get("kl"),  # measured by ppo/rloo on their held-out prompts; DPO reports none
        }
    return report


def _fmt(x: Any, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def write_report(report: dict[str, Any], out: Path) -> None:
    from annotate.jsonutil import to_jsonable  # an undefined interval (NaN) is null, as in every JSON written

    (out / "report.json").write_text(json.dumps(to_jsonable(report), indent=2, default=str) + "\n")
    lines = [f"# Pipeline report: {out}", "", f"Training pairs: `{report['train']}`; held out: `{report['heldout']}`."]
    r = report.get("reward")
    if r:
        lines += ["", "## Reward model", "", "| measure | value |", "|---|---|",
                  f"| held-out accuracy | {_fmt(r['accuracy'])} (95% CI {_fmt(r['ci95'][0])}-{_fmt(r['ci95'][1])}, "
                  f"{r['pairs']} pairs) |",
                  f"| \"pick the longer\" rule, same pairs | {_fmt(r.get('longer_rule_accuracy'))} |",
                  f"| \"pick the shorter\" rule, same pairs | {_fmt(r.get('shorter_rule_accuracy'))} |",
                  f"| style-only model (fitted on the training pairs), same pairs | "
                  f"{_fmt(r.get('style_model_accuracy'))} |",
                  f"| reward-length Spearman | {_fmt(r.get('length_spearman'))} |"]  # fmt: skip
        if r.get("ruler_verdict"):
            lines += ["", f"Length ruler: {r['ruler_verdict']}"]
    if report.get("dpo"):
        d = report["dpo"]
        ci = f"95% CI {_fmt(d['ci95'][0])}-{_fmt(d['ci95'][1])}, " if d.get("ci95") else ""
        lines += ["", f"DPO implicit-reward accuracy on held-out pairs: {_fmt(d['implicit_reward_accuracy'])} "
                  f"({ci}{d.get('pairs', '?')} pairs)"]  # fmt: skip
    if report["policies"]:
        lines += ["", "## Policies against the starting model (judged by the reward model)", "",
                  "| policy | win rate | length-controlled | length-matched | length change (tokens) | KL (nats) |",
                  "|---|---|---|---|---|---|"]  # fmt: skip
        for name, p in report["policies"].items():
            lines.append(f"| {name} | {_fmt(p['win_rate'])} | {_fmt(p['win_rate_length_controlled'])} | "
                         f"{_fmt(p['win_rate_length_matched'])} | {_fmt(p['length_change'], '+.1f')} | "
                         f"{_fmt(p['kl'], '.2f')} |")  # fmt: skip
    lines += ["", "## Stages", "", "| stage | wall time (s) | peak resident memory (MB) |", "|---|---|---|"]
    lines += [f"| {k} | {v['wall_s']} | {v['peak_rss_mb']} |" for k, v in report["stages"].items()]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    _plot(report, out / "report.png")
    print(f"[pipeline] report: {out / 'report.md'}")


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    r = report.get("reward") or {}
    names = ["reward model", "longer rule", "shorter rule"]
    vals = [r.get("accuracy"), r.get("longer_rule_accuracy"), r.get("shorter_rule_accuracy")]
    axes[0].bar(names, [v or 0 for v in vals], color=["#4c72b0", "#999999", "#cccccc"])
    if r.get("ci95") and r["ci95"][0] is not None and r.get("accuracy") is not None:
        axes[0].errorbar([0], [r["accuracy"]], yerr=[[r["accuracy"] - r["ci95"][0]], [r["ci95"][1] - r["accuracy"]]],
                         fmt="none", color="black", capsize=4)  # fmt: skip
    axes[0].axhline(0.5, color="red", lw=0.8, ls="--")
    axes[0].set_ylim(0, 1)
    axes[0].set_title("held-out pairwise accuracy")
    pol = report.get("policies") or {}
    xs = list(pol)
    for k, (key, label) in enumerate((("win_rate", "raw"), ("win_rate_length_controlled", "length-controlled"))):
        axes[1].bar([i + 0.4 * k for i in range(len(xs))], [pol[x][key] or 0 for x in xs], width=0.4, label=label)
    axes[1].set_xticks([i + 0.2 for i in range(len(xs))], xs)
    axes[1].axhline(0.5, color="red", lw=0.8, ls="--")
    axes[1].set_ylim(0, 1)
    axes[1].set_title("win rate over the starting model")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def recipe_from_args(argv: list[str] | None = None) -> dict[str, Any]:
    """The recipe of `--config`, with the flags' overrides applied and its data checked (exit 2 naming it)."""
    from annotate.store import parse_store_spec
    from rlhf.config import OneLineParser  # a mistake is one line, as for every rlhf/train.py command

    parser = OneLineParser(prog="python rlhf/train.py pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="pipeline recipe (YAML), e.g. recipes/hh-smollm2.yaml")
    parser.add_argument("--output-dir", default=None, help="overrides the recipe's output_dir")
    parser.add_argument("--data", default=None, help="overrides the recipe's data (an export, a store, HH/TRL JSONL)")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.config)
    if args.output_dir:
        recipe["output_dir"] = args.output_dir
    if args.data:
        recipe["data"], recipe["data_format"] = args.data, None  # the recipe's format was for its own data
    where = Path(parse_store_spec(recipe["data"])[0])  # a store may be pinned: votes@12
    if not where.exists():
        raise _fail(f"data: {where}: no such file or folder (give yours with --data, e.g. runs/prefs-train.parquet)")
    return recipe


def main(argv: list[str] | None = None) -> int:
    run(recipe_from_args(argv))
    return 0
