"""Preferred is not correct (issue 15, item 5): three policies trained on checkable prompts, on biased preferences.

The preference labels come from simulated annotators who pick the long, confident answer 70% of the time whatever
its correctness, so the gap between preferred and correct is planted and known.

    # smoke size (tests/test_correct_vs_preferred_bench.py: ~30-40 s on a busy 2-core box): config-built tiny models
    .venv/bin/python bench/correct_vs_preferred.py --tiny --in-process --seeds 42 --out /tmp/cvp-smoke
    # the real run: the default SmolLM2-135M-Instruct, three seeds. Estimated (not yet measured) at ~25 min a seed on
    # one H100/H200, most of it RL sampling; on the 2-core CPU ~15-20 h a seed (BENCHMARKS.md's per-step reward and
    # PPO figures scaled), so run it on a GPU. --reuse keeps finished runs, so seeds can be added one at a time.
    .venv/bin/python bench/correct_vs_preferred.py --seeds 42 1 2 --reuse --out bench/results/correct_vs_preferred \\
        --work /tmp/cvp-work

Data (bench/checkable_set.py): --generated arithmetic and unit-conversion prompts (eight candidates each: right/wrong x
short/long x confident/hedged, numeric verifiers) plus the demo pool's 40 checkable prompts, written as a pool and
imported into a fresh store (`annotate.importers.import_pool`); simulated annotators vote on pairs through the
store's append API, by style with probability --bias (0.7), else for the answer that passes the verifier; then
`python -m annotate export --test-fraction F --seed S`, the one by-prompt split (annotate/split.py): every command
below trains on prefs-train and holds out prefs-test, the prompts every figure is measured on. The votes, the split
and the held-out prompts are the same for every seed (--data-seed); --seeds vary training and sampling.

Each seed trains, all through `python rlhf/train.py` as users run it:
- rm-overall: `reward` on the overall preferences alone (the annotators' choice);
- rm-correct: `reward --heads overall,correct --objective correct=2,overall=1` (criterion_correct: the verifiers'
  verdicts, written by the export where exactly one response passes);
- three policies from the same starting model, with the same sampler, batch, group size, KL coefficient and steps:
  `overall` = RLOO against rm-overall, `correct` = RLOO against rm-correct (RLOO rather than PPO: no value model
  and one update per batch, much the cheaper on a CPU, BENCHMARKS.md "The HH pipeline"), and `blended` = GRPO on
  rm-overall's score plus a verifier bonus (--verifier-sds times rm-overall's held-out score standard deviation,
  so the bonus is in the reward model's own units);
- `evaluate` of each policy against the starting model on the held-out prompts (greedy, judged by rm-overall: the
  annotators' taste), every answer kept.

Per policy (bench/correct_vs_preferred_report.py): held-out verifier accuracy of the starting model's answers
(before) and the policy's (after); rm-overall's win rate over the starting model, raw and length-controlled; mean
length change (the judge's tokens); of the policy's wrong answers, the share longer than the starting model's answer
to the same prompt, more confident (confidence minus hedging markers per 100 words, annotate.audit_features), and
either. The bar (issue 15): the `overall` policy wins on rm-overall (win rate > 0.5) without gaining verifier
accuracy, and the `blended` policy gains verifier accuracy (means over seeds; per seed too).

Writes to --out: correct_vs_preferred.json (settings, data, every run, summary, the bar; rewritten after each
policy), correct_vs_preferred.md (tables, also printed) and correct_vs_preferred.png. Work files go to --work;
--reuse keeps runs already finished there with the same command line.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "bench")]  # rlhf/, annotate/, tests/fixtures, bench/

from checkable_set import save_tiny_policy, simulate_votes, write_checkable_pool  # noqa: E402
from correct_vs_preferred_report import arm_figures, fmt, markdown, plot, summarise  # noqa: E402
from debias import RunFailed, run_cli, train_cli  # noqa: E402 - one way to run a CLI and reuse its result

ARMS = ("overall", "correct", "blended")
# Per scale: the default model's settings are sized for a GPU; the tiny ones only exercise every path in seconds.
DEFAULTS: dict[str, dict[str, Any]] = {
    "default": {
        "generated": 200, "pairs_per_prompt": 12, "test_fraction": 0.2, "rm_steps": -1, "steps": 100,
        "rm_lr": 2e-5, "rl_lr": 1e-5, "rm_batch": 8, "rl_batch": 16, "num_generations": 8, "response_length": 96,
        "max_length": 384, "eval_prompts": 32, "eval_samples": 4, "logging_steps": 10,
    },
    "tiny": {
        "generated": 16, "pairs_per_prompt": 6, "test_fraction": 0.25, "rm_steps": 2, "steps": 1,
        "rm_lr": 1e-3, "rl_lr": 1e-3, "rm_batch": 8, "rl_batch": 4, "num_generations": 2, "response_length": 6,
        "max_length": 512, "eval_prompts": 2, "eval_samples": 1, "logging_steps": 1,
    },
}  # fmt: skip


def prepare_data(args: argparse.Namespace) -> dict[str, Any]:
    """Pool -> store (pool imported, simulated votes appended) -> export split by prompt. Rebuilt every time: seconds,
    and exactly the data of these settings."""
    from annotate.importers import import_pool

    root = args.work / "data"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    pool, store = root / "pool.jsonl", root / "store"
    info = write_checkable_pool(pool, args.generated, seed=args.data_seed, demo=not args.no_demo)
    import_pool(pool, store)  # the store keeps the pool: its verifiers label criterion_correct on export
    info["votes"] = simulate_votes(pool, store, bias=args.bias, pairs_per_prompt=args.pairs_per_prompt,
                                   annotators=args.annotators, seed=args.data_seed)  # fmt: skip
    export = [sys.executable, "-m", "annotate", "export", "--store", str(store), "--out", str(root / "prefs.parquet"),
              "--test-fraction", str(args.test_fraction), "--seed", str(args.data_seed)]  # fmt: skip
    run_cli(export, root / "export.log")
    import pyarrow.parquet as pq

    train, test = root / "prefs-train.parquet", root / "prefs-test.parquet"
    for name, path in (("train", train), ("test", test)):
        t = pq.read_table(path, columns=["prompt_id", "correct_by"])
        info[f"{name}_pairs"] = t.num_rows
        info[f"{name}_prompts"] = len(set(t.column("prompt_id").to_pylist()))
        info[f"{name}_verifier_labelled"] = t.column("correct_by").to_pylist().count("verifier")
    model = save_tiny_policy(root / "tiny-policy", pool) if args.tiny else args.model
    # Runs live under a folder named for the data they trained on: --reuse compares command lines, which name the
    # data's paths, not its content, so other data must not find these runs. The votes and the split are a pure
    # function of the pool and these settings.
    keys = ("bias", "pairs_per_prompt", "annotators", "data_seed", "test_fraction", "tiny")
    what = json.dumps({k: getattr(args, k) for k in keys}, sort_keys=True).encode() + pool.read_bytes()
    digest = hashlib.sha1(what).hexdigest()[:10]
    runs = args.work / f"runs-{digest}"
    return {"pool": pool, "store": store, "train": train, "test": test, "model": model, "info": info, "runs": runs}


def run_train(args: argparse.Namespace, command: str, flags: list[str], out: Path) -> dict[str, Any]:
    """`python rlhf/train.py COMMAND FLAGS --output-dir OUT` as a subprocess (bench/debias.py's train_cli: the
    command users run, --reuse honoured); its eval.json plus wall_s. With --in-process, rlhf.train.main in this
    process instead, as the tests call it: the same code and flags without a ~5 s import per run (the smoke test)."""
    if not args.in_process:
        return train_cli(command, flags, out, args.reuse)
    from rlhf import train

    shutil.rmtree(out, ignore_errors=True)
    log = out.parent / f"{out.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with log.open("w") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            code = train.main([command, *flags, "--output-dir", str(out)])
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a failed run is one failed row, as in a subprocess
            print(f"{type(e).__name__}: {e}")
            code = 1
    if code:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RunFailed(f"train.py {command} exited {code}; the end of {log}:\n{tail}")
    return json.loads((out / "eval.json").read_text()) | {"wall_s": time.perf_counter() - t}


def _common(args: argparse.Namespace, model: str, seed: int) -> list[str]:
    return ["--model", model, "--seed", str(seed), "--max-length", str(args.max_length), "--device", args.device,
            "--logging-steps", str(args.logging_steps)]  # fmt: skip


def _rl_flags(args: argparse.Namespace, data: dict[str, Any], seed: int, reward_model: Path) -> list[str]:
    """What the three policies share: data, steps, batch, group size, learning rate, KL, sampling."""
    return [*_common(args, data["model"], seed), "--data", str(data["train"]), "--reward-model", str(reward_model),
            "--max-steps", str(args.steps), "--per-device-train-batch-size", str(args.rl_batch),
            "--num-generations", str(args.num_generations), "--learning-rate", str(args.rl_lr),
            "--kl-coef", str(args.kl_coef), "--response-length", str(args.response_length),
            "--temperature", "1.0", "--eval-prompts", str(args.eval_prompts)]  # fmt: skip


def train_rewards(args: argparse.Namespace, data: dict[str, Any], seed: int) -> dict[str, dict[str, Any]]:
    base = [*_common(args, data["model"], seed), "--data", str(data["train"]), "--max-steps", str(args.rm_steps),
            "--learning-rate", str(args.rm_lr), "--per-device-train-batch-size", str(args.rm_batch)]  # fmt: skip
    runs = {"rm-overall": base, "rm-correct": [*base, "--heads", "overall,correct", "--objective", args.objective]}
    out = {}
    for name, flags in runs.items():
        ev = run_train(args, "reward", flags, data["runs"] / f"seed-{seed}" / name)
        keep = ("eval_accuracy", "eval_pairs", "eval_reward_std", "eval_head_correct_accuracy",
                "eval_head_correct_pairs", "eval_overall_vs_correct_disagreement", "wall_s", "reused")  # fmt: skip
        out[name] = {k: ev[k] for k in keep if k in ev}
        print(f"[cvp] seed {seed} {name}: held-out accuracy {ev['eval_accuracy']:.3f} ({ev['eval_pairs']} pairs)",
              flush=True)  # fmt: skip
    return out


def verifier_weight(args: argparse.Namespace, rm: dict[str, Any]) -> float:
    """--verifier-sds standard deviations of rm-overall's held-out scores: a verified answer is worth that many of
    the reward model's typical spreads (1.0 per sd when the run reported none)."""
    sd = rm.get("eval_reward_std") or 0.0
    return args.verifier_sds * (sd if sd > 0 else 1.0)


def train_policy(args: argparse.Namespace, data: dict[str, Any], seed: int, arm: str, rms: dict) -> dict[str, Any]:
    d = data["runs"] / f"seed-{seed}"
    if arm == "blended":
        w = verifier_weight(args, rms["rm-overall"])
        flags = [*_rl_flags(args, data, seed, d / "rm-overall"), "--verifiers", str(data["pool"]), "--rm-weight",
                 "1", "--verifier-weight", f"{w:.6g}", "--eval-samples", str(args.eval_samples)]  # fmt: skip
        command = "grpo"
    else:
        command, w = "rloo", None
        flags = _rl_flags(args, data, seed, d / ("rm-overall" if arm == "overall" else "rm-correct"))
    ev = run_train(args, command, flags, d / arm)
    # The trainer's own held-out figures (sampled at temperature 1, scored by the reward model it trained on), kept
    # apart from the bench's greedy ones under an rl_ prefix.
    keep = ("score_before", "score", "kl", "accuracy_before", "accuracy", "train_s", "wall_s", "reused")
    return {"trainer": command, "verifier_weight": w} | {f"rl_{k}": ev[k] for k in keep if k in ev}


def evaluate_policy(args: argparse.Namespace, data: dict[str, Any], seed: int, arm: str) -> dict[str, Any]:
    """`evaluate` against the starting model, judged by rm-overall, every held-out answer kept. Greedy with a fixed
    evaluation seed, so the starting model's answers are generated once and reused (--reference-answers)."""
    d = data["runs"] / f"seed-{seed}"
    flags = ["--policy", str(d / arm), "--reference", data["model"], "--reward-model", str(d / "rm-overall"),
             "--prompts", str(data["test"]), "--num-prompts", "1000000", "--num-examples", "1000000",
             "--max-new-tokens", str(args.response_length), "--seed", "0",
             "--reference-answers", str(data["runs"] / "reference-answers.json")]  # fmt: skip
    return run_train(args, "evaluate", flags, d / f"eval-{arm}")


def write_json(args: argparse.Namespace, data: dict[str, Any] | None, rows: list[dict], rms: dict) -> dict:
    from annotate.jsonutil import to_jsonable

    summary, check = summarise(rows)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    out = {
        "command": ["bench/correct_vs_preferred.py", *sys.argv[1:]],
        "settings": settings,
        "model": data["model"] if data else None,
        "data": data["info"] if data else None,
        "reward_models": rms,
        "rows": rows,
        "summary": summary,
        "check": check,
    }
    path = args.out / "correct_vs_preferred.json"
    path.write_text(json.dumps(to_jsonable(out), indent=1, allow_nan=False) + "\n")
    return out


def run_seed(args: argparse.Namespace, data: dict[str, Any], seed: int, rows: list, rms: dict) -> None:
    from annotate.pool import read_pool, read_verifiers

    verifiers = read_verifiers(data["pool"])
    origin = _origins(read_pool(data["pool"]))
    try:
        rms[str(seed)] = train_rewards(args, data, seed)
    except RunFailed as e:
        rows += [{"seed": seed, "arm": arm, "error": f"reward model: {e}"} for arm in args.arms]
        print(f"[cvp] seed {seed}: reward models FAILED: {e}", flush=True)
        return
    for arm in args.arms:
        row: dict[str, Any] = {"seed": seed, "arm": arm}
        try:
            row |= train_policy(args, data, seed, arm, rms[str(seed)])
            row |= arm_figures(evaluate_policy(args, data, seed, arm), verifiers, origin)
            print(f"[cvp] seed {seed} {arm}: verifier accuracy {fmt(row['accuracy_before'])} -> "
                  f"{fmt(row['accuracy_after'])}, win rate {fmt(row['win_rate'])}, length change "
                  f"{fmt(row['length_change'], 1, True)} tokens", flush=True)  # fmt: skip
        except RunFailed as e:
            row["error"] = str(e)
            print(f"[cvp] seed {seed} {arm}: FAILED: {e}", flush=True)
        rows.append(row)
        write_json(args, data, rows, rms)


def _origins(pool: Any) -> dict[str, str]:
    """The verifiers' key of each prompt (annotate.schema.prompt_id_for) -> 'generated' or 'demo'."""
    from annotate.schema import prompt_id_for

    rows = pool.select(["prompt", "source"]).to_pylist()
    return {prompt_id_for(r["prompt"]): "generated" if r["source"] == "bench:checkable" else "demo" for r in rows}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default", help="starting policy and reward-model body (default: SmolLM2)")
    p.add_argument("--tiny", action="store_true", help="config-built tiny models and small sizes: a smoke run on CPU")
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2], help="training and sampling seeds")
    p.add_argument("--steps", type=int, default=None, help="RL steps per policy (default 100; tiny 1)")
    p.add_argument("--rm-steps", type=int, default=None, help="reward-model steps; -1 = one epoch (tiny 2)")
    p.add_argument("--rl-lr", type=float, default=None, help="learning rate of every policy (1e-5; tiny 1e-3)")
    p.add_argument("--rm-lr", type=float, default=None, help="learning rate of the reward models (2e-5; tiny 1e-3)")
    p.add_argument("--rl-batch", type=int, default=None, help="completions per RL step (16; tiny 4)")
    p.add_argument("--num-generations", type=int, default=None, help="completions per prompt, RLOO and GRPO (8)")
    p.add_argument("--response-length", type=int, default=None, help="new tokens, training and evaluation (96)")
    p.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS), help="which policies to train")
    p.add_argument("--objective", default="correct=2,overall=1", help="rm-correct's heads' weights (its score)")
    p.add_argument(
        "--verifier-sds",
        type=float,
        default=2.0,
        help="blended: verifier bonus in sds of rm-overall's held-out scores",
    )
    p.add_argument("--kl-coef", type=float, default=0.05, help="KL coefficient of every policy (RLOO's default)")
    p.add_argument("--bias", type=float, default=0.7, help="share of votes decided by style (long, confident)")
    p.add_argument("--generated", type=int, default=None, help="generated prompts (default 200; tiny 16)")
    p.add_argument("--no-demo", action="store_true", help="leave out the demo pool's 40 checkable prompts")
    p.add_argument("--pairs-per-prompt", type=int, default=None, help="votes per prompt (default 12; tiny 6)")
    p.add_argument("--annotators", type=int, default=3, help="simulated annotators (all with the same taste)")
    p.add_argument("--test-fraction", type=float, default=None, help="held-out share of prompts (0.2; tiny 0.25)")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated set, the votes and the split")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--out", type=Path, default=Path("/tmp/correct_vs_preferred"), help="JSON, Markdown and plot")
    p.add_argument("--work", type=Path, default=None, help="data and run directories (default OUT/work)")
    p.add_argument("--reuse", action="store_true", help="keep runs already finished in --work with the same flags")
    p.add_argument(
        "--in-process", action="store_true", help="run the training CLIs in this process (no reuse): the smoke test"
    )
    args = p.parse_args(argv)
    for key, value in DEFAULTS["tiny" if args.tiny else "default"].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if not 0.0 <= args.bias <= 1.0:
        p.error(f"--bias must be a share in [0, 1], got {args.bias}")
    args.out = args.out.resolve()
    args.work = (args.work or args.out / "work").resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the default model comes from the local cache, as in the tests
    args.out.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args)
    v = data["info"]["votes"]
    print(f"[cvp] {v['votes']} votes; the wrong answer won {v['wrong_preferred']:.1%} of right-vs-wrong votes and "
          f"{v['wrong_preferred_when_more_appealing']:.1%} where it was the more appealing one (planted: "
          f"{args.bias:.0%}); {data['info']['test_prompts']} held-out prompts", flush=True)  # fmt: skip
    rows: list[dict[str, Any]] = []
    rms: dict[str, Any] = {}
    for seed in args.seeds:
        run_seed(args, data, seed, rows, rms)
    result = write_json(args, data, rows, rms)
    text = markdown(result)
    (args.out / "correct_vs_preferred.md").write_text(text)
    plot(result, args.out / "correct_vs_preferred.png")
    print(text)
    print(f"[cvp] {args.out / 'correct_vs_preferred.json'}, .md, .png")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
