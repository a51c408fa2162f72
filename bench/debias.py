"""Every length-debiasing method side by side (issue 14, item 5): the reward model's `--length-debias` methods and
DPO's length-aware losses on two testbeds, over several seeds, against a model trained on unbiased labels.

    # smoke size (about a minute on one core): the synthetic testbed, tiny model, few steps
    .venv/bin/python bench/debias.py --testbeds synthetic --methods none poe --losses rdpo --seeds 42 \\
        --steps 4 --dpo-steps 3 --out /tmp/debias-smoke
    # the full benchmark (hours on a CPU; see BENCHMARKS.md): both testbeds, every method, three seeds, a judge;
    # the run directories (a checkpoint each, ~0.5 GB with SmolLM2) stay out of the repository
    .venv/bin/python bench/debias.py --testbeds synthetic hh --seeds 42 1 2 --train-judge --reuse \
        --out bench/results/debias --work /tmp/debias-work

Testbeds:
- synthetic: tests/test_length_debias.py's confounded set and tiny Llama (the chosen response is the longer one in
  ~85% of training pairs and 50% of held-out pairs; a marker word carries quality). Unbiased counterpart: the same
  training pairs with their padding dealt so that the chosen response is the longer in half of them (labels,
  marker words and numbers unchanged).
- hh: the HH-RLHF harmless sample (../shared/data), imported and exported by the CLIs (`python -m annotate import
  --format hh`, `export --test-fraction 0.1`), with a planted verbosity bias: a share --plant of the training pairs
  (default 30%), drawn among those whose chosen response is the shorter, get their label flipped so that the
  longer response wins, as verbose-loving annotators would have decided them (plant_verbosity). Held-out pairs keep
  the original labels. Unbiased counterpart: the original training labels. Skipped, with a message, when the
  sample is absent.

Every run is the command users run, `python rlhf/train.py reward|dpo|evaluate`, as a subprocess. Rows:
- reward: one per --methods x --seeds, trained on the biased pairs: held-out accuracy on the true labels, reward-length
  Spearman (eval.json; lengths in tokens), reward-style Spearman (the reward of each held-out response against the
  score of the length ruler's style-only model fitted on the biased training pairs, scored here through
  rlhf.reward.heldout_scores, the path the reward run itself uses), and the length ruler's flag;
- reference: `none` trained on the unbiased pairs, one per seed: what the check below compares with;
- dpo: one per --losses x --seeds, trained on the biased pairs: held-out implicit-reward accuracy (eval.json); with
  a judge (--judge for hh, or --train-judge: each testbed's reference reward model of the first seed), also
  `evaluate` of the policy against its starting model on held-out prompts: mean length change (judge's tokens), win
  rate and length-controlled win rate.

The check (issue 14): a reward method recovers when its mean held-out accuracy is at least 90% of the reference's
while its mean reward-length Spearman is within 0.05 of the reference's (also counted seed by seed).

Writes to --out: debias.json (every row, per-method mean and spread, the check, the settings; rewritten after every
run, so an interrupted benchmark keeps what it finished), debias.md (the tables, also printed) and debias.png (the
Pareto plot). Work files (data, run directories, logs) go to --work; --reuse skips runs already finished there with
the same command line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # rlhf/, annotate/, and the synthetic set of tests/

HH_SAMPLE = REPO.parent / "shared/data/hh-rlhf-harmless-sample.jsonl.gz"
METHODS = ("none", "resample", "joint", "odin", "poe")
LOSSES = ("sigmoid", "rdpo", "ld", "simpo", "sigmoid_norm")
RECOVER_ACCURACY = 0.9  # issue 14: at least 90% of the unbiased model's held-out accuracy ...
RECOVER_SPEARMAN = 0.05  # ... with its reward-length correlation within 0.05 of the unbiased model's
METRICS = ("accuracy", "length_spearman", "style_spearman", "margin", "length_change", "win_rate_lc", "win_rate")

# Per-testbed defaults: the synthetic set's are tests/test_length_debias.py's (reward) and tests/test_dpo_losses.py's
# (DPO); the hh ones are recipes/hh-smollm2.yaml's stages (one epoch of ~650 pairs that fit in 256 tokens, 8 pairs a
# step), without gradient checkpointing (runs are sequential, so memory allows it, and it costs ~30% speed).
DEFAULTS: dict[str, dict[str, Any]] = {
    "synthetic": {
        "steps": 150,
        "dpo_steps": 60,
        "max_length": 512,
        "judge_prompts": 20,
        "max_new_tokens": 8,
        "reward": ["--learning-rate", "3e-3", "--per-device-train-batch-size", "16"],
        "dpo": ["--learning-rate", "1e-3", "--per-device-train-batch-size", "16"],
    },
    "hh": {
        "steps": 80,
        "dpo_steps": 40,
        "max_length": 256,
        "judge_prompts": 48,
        "max_new_tokens": 64,
        "reward": [
            "--learning-rate",
            "2e-5",
            "--per-device-train-batch-size",
            "4",
            "--gradient-accumulation-steps",
            "2",
        ],
        "dpo": ["--learning-rate", "5e-6", "--per-device-train-batch-size", "4", "--gradient-accumulation-steps", "2"],
    },
}


class RunFailed(RuntimeError):
    """A CLI the benchmark ran exited non-zero (the message ends with its log's last lines)."""


# -- data: the planted bias, the rebalanced synthetic set -------------------------------------------------------
def _text(messages: list[dict[str, str]]) -> str:
    return messages[-1]["content"]


def chosen_longer_share(rows: list[dict[str, Any]]) -> float:
    """Share of pairs with responses of unequal length (characters) whose chosen response is the longer."""
    diffs = [len(_text(r["chosen"])) - len(_text(r["rejected"])) for r in rows]
    unequal = [d for d in diffs if d]
    return sum(d > 0 for d in unequal) / len(unequal) if unequal else math.nan


def _swapped(row: dict[str, Any]) -> dict[str, Any]:
    """The pair with its label flipped: every chosen* field trades places with its rejected* counterpart (response,
    id, source); pair-level fields (margin, agreement, votes) stay."""
    out = dict(row)
    for key in row:
        other = "rejected" + key[len("chosen") :]
        if key.startswith("chosen") and other in row:
            out[key], out[other] = row[other], row[key]
    return out


def plant_verbosity(rows: list[dict[str, Any]], share: float, seed: int = 0) -> tuple[list[dict[str, Any]], list[int]]:
    """Relabel round(share * len(rows)) pairs so that the longer response wins, as verbose-loving annotators would.

    The pairs are drawn (seeded) among those whose chosen response is the shorter (characters), and each has its
    label flipped (_swapped): exactly that many labels change, every one to the longer response; the other rows are
    returned as they were. Returns (rows, sorted indices of the relabelled pairs). Raises ValueError when `share` is
    outside [0, 1] or asks for more pairs than have a shorter chosen response."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"--plant must be a share in [0, 1], got {share}")
    k = round(share * len(rows))
    eligible = [i for i, r in enumerate(rows) if len(_text(r["chosen"])) < len(_text(r["rejected"]))]
    if k > len(eligible):
        raise ValueError(
            f"--plant {share}: {k} of {len(rows)} pairs to relabel, but only {len(eligible)} have a shorter chosen "
            "response"
        )
    picked = sorted(random.Random(seed).sample(eligible, k))
    out = list(rows)
    for i in picked:
        out[i] = _swapped(rows[i])
    return out, picked


def plant_split(train: Path, test: Path, out_dir: Path, share: float, seed: int = 0) -> dict[str, Any]:
    """OUT/planted-train.parquet (plant_verbosity on `train`) and OUT/planted-test.parquet (`test`, byte for byte)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(train)
    before = table.to_pylist()
    rows, picked = plant_verbosity(before, share, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), out_dir / "planted-train.parquet")
    shutil.copyfile(test, out_dir / "planted-test.parquet")  # the held-out pairs keep their original labels
    return {
        "pairs": len(rows),
        "relabelled": len(picked),
        "plant": share,
        "chosen_longer_before": chosen_longer_share(before),
        "chosen_longer_after": chosen_longer_share(rows),
    }


def _padding(text: str) -> tuple[int, str]:
    """The synthetic set's responses are "= " * k + body (tests/test_length_debias.py: padded): (k, body)."""
    body = text.lstrip("= ")
    return text[: len(text) - len(body)].count("="), body


def rebalance_padding(rows: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """The synthetic training pairs without the length confound: each pair keeps its two padding amounts, but the
    chosen response gets the longer one with probability 1/2. Labels, marker words and numbers are unchanged."""
    rng = random.Random(seed)
    out = []
    for r in rows:
        (kc, bc), (kr, br) = _padding(_text(r["chosen"])), _padding(_text(r["rejected"]))
        long, short = max(kc, kr), min(kc, kr)
        kc, kr = (long, short) if rng.random() < 0.5 else (short, long)
        out.append(
            {
                **r,
                "chosen": [{"role": "assistant", "content": "= " * kc + bc}],
                "rejected": [{"role": "assistant", "content": "= " * kr + br}],
            }
        )
    return out


# -- testbeds ---------------------------------------------------------------------------------------------------
@dataclass
class Testbed:
    name: str
    title: str
    model: str
    train: Path  # the biased training pairs
    unbiased: Path  # the same pairs, unbiased
    test: Path  # held-out pairs, true labels
    info: dict[str, Any] = field(default_factory=dict)


def _rows(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def synthetic_testbed(work: Path, model: str | None) -> Testbed:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from test_length_debias import write_confounded_set  # the test's own set: the figures describe exactly it

    root = work / "synthetic"
    tiny = write_confounded_set(root)
    train, test, unbiased = (root / "data" / f"{n}.parquet" for n in ("prefs-train", "prefs-test", "unbiased-train"))
    table = pq.read_table(train)
    pq.write_table(pa.Table.from_pylist(rebalance_padding(table.to_pylist()), schema=table.schema), unbiased)
    info = {
        "train_pairs": table.num_rows,
        "test_pairs": len(_rows(test)),
        "chosen_longer_train": chosen_longer_share(_rows(train)),
        "chosen_longer_unbiased": chosen_longer_share(_rows(unbiased)),
        "chosen_longer_test": chosen_longer_share(_rows(test)),
    }
    title = "synthetic: length confounded with the label in training (tests/test_length_debias.py)"
    return Testbed("synthetic", title, model or tiny, train, unbiased, test, info)


def hh_testbed(work: Path, model: str | None, src: Path, plant: float, plant_seed: int) -> Testbed | None:
    if not src.exists():
        print(f"[debias] skipping the hh testbed: {src} is not there (the HH-RLHF sample belongs in ../shared/data)")
        return None
    root = work / "hh"
    shutil.rmtree(root / "store", ignore_errors=True)  # rebuilt every time: seconds, and the same split (seed 0)
    for old in root.glob("prefs*.parquet"):
        old.unlink()
    py = [sys.executable, "-m", "annotate"]
    run_cli([*py, "import", str(src), "--format", "hh", "--store", str(root / "store")], root / "logs/import.log")
    export = [*py, "export", "--store", str(root / "store"), "--out", str(root / "prefs.parquet"), "--test-fraction",
              "0.1"]  # fmt: skip
    run_cli(export, root / "logs/export.log")
    info = plant_split(root / "prefs-train.parquet", root / "prefs-test.parquet", root, plant, plant_seed)
    info["test_pairs"] = len(_rows(root / "prefs-test.parquet"))
    info["chosen_longer_test"] = chosen_longer_share(_rows(root / "prefs-test.parquet"))
    title = f"hh: HH-RLHF harmless sample, {plant:.0%} of training pairs relabelled to the longer response"
    return Testbed(name="hh", title=title, model=model or "default", train=root / "planted-train.parquet",
                   unbiased=root / "prefs-train.parquet", test=root / "planted-test.parquet", info=info)  # fmt: skip


# -- running the CLIs -------------------------------------------------------------------------------------------
def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_cli(argv: list[str], log: Path, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run one command from the repository root, output to `log`; (wall s, CPU s). RunFailed on a non-zero exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t, cpu = time.perf_counter(), _children_cpu()
    with log.open("w") as f:
        code = subprocess.run(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RunFailed(f"{' '.join(argv[1:4])} ... exited {code}; the end of {log}:\n{tail}")
    return time.perf_counter() - t, _children_cpu() - cpu


def train_cli(command: str, flags: list[str], out: Path, reuse: bool, env: dict[str, str] | None = None) -> dict:
    """`python rlhf/train.py COMMAND FLAGS --output-dir OUT`; its eval.json plus wall_s and cpu_s. With `reuse`, a run
    already finished in OUT with the same command line is read instead of run again."""
    argv = [sys.executable, str(REPO / "rlhf/train.py"), command, *flags, "--output-dir", str(out)]
    stamp = out / "bench-argv.json"
    if reuse and (out / "eval.json").exists() and stamp.exists() and json.loads(stamp.read_text()) == argv[1:]:
        return json.loads((out / "eval.json").read_text()) | {"reused": True}
    shutil.rmtree(out, ignore_errors=True)  # no stale checkpoint or eval.json from another run
    wall, cpu = run_cli(argv, out.parent / f"{out.name}.log", env)
    stamp.write_text(json.dumps(argv[1:]))
    return json.loads((out / "eval.json").read_text()) | {"wall_s": wall, "cpu_s": cpu}


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def style_spearman(model_dir: Path, test: Path, style: Any, max_length: int, device: str) -> float | None:
    """Spearman of the reward of each held-out response (the pairs the run kept, scored by heldout_scores, as the
    reward run does) with its style-only score (style_vectors / scale . weights)."""
    from scipy.stats import spearmanr

    from annotate.audit_features import style_vectors
    from rlhf.data import drop_long, load_preferences
    from rlhf.models import load_tokenizer
    from rlhf.reward import heldout_scores, load_reward_model, responses

    tok = load_tokenizer(str(model_dir))
    model = load_reward_model(str(model_dir), tok).to(_device(device))
    ds = drop_long(load_preferences(str(test)), tok, max_length, "test")
    rewards = heldout_scores(model, tok, ds)["rewards"]
    chosen, rejected = responses(ds)
    s = style_vectors(chosen + rejected) / style.scale @ style.weights
    return float(spearmanr(rewards, s)[0]) if rewards.std() > 0 and s.std() > 0 else None


@dataclass
class Bench:
    """The settings of one benchmark and the rows it has so far."""

    args: argparse.Namespace
    rows: list[dict[str, Any]] = field(default_factory=list)
    testbeds: dict[str, dict[str, Any]] = field(default_factory=dict)

    def opt(self, tb: Testbed, name: str) -> Any:
        value = getattr(self.args, name, None)
        return DEFAULTS[tb.name][name] if value is None else value

    def common(self, tb: Testbed, seed: int, steps: int) -> list[str]:
        return ["--model", tb.model, "--eval-data", str(tb.test), "--seed", str(seed), "--max-steps", str(steps),
                "--max-length", str(self.opt(tb, "max_length")), "--device", self.args.device,
                "--logging-steps", "10"]  # fmt: skip

    def add(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        write_json(self)
        what = f"[debias] {row['testbed']} {row['kind']} {row['method']} seed {row['seed']}"
        if "error" in row:
            print(f"{what}: FAILED: {row['error']}", flush=True)
            return
        shown = {k: row[k] for k in (*METRICS, "ruler_flag") if row.get(k) is not None}
        took = f" ({row['wall_s'] / 60:.1f} min)" if row.get("wall_s") else ""
        print(f"{what}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in shown.items()) + took, flush=True)

    def reward(self, tb: Testbed, kind: str, method: str, seed: int, style: Any) -> None:
        a = self.args
        out = a.work / tb.name / kind / f"{method}-s{seed}"
        data = tb.unbiased if kind == "reference" else tb.train
        flags = ["--data", str(data), *self.common(tb, seed, self.opt(tb, "steps")), "--length-debias", method,
                 *DEFAULTS[tb.name]["reward"], *a.reward_flags]  # fmt: skip
        row: dict[str, Any] = {"testbed": tb.name, "kind": kind, "method": method, "seed": seed, "dir": str(out)}
        try:
            ev = train_cli("reward", flags, out, a.reuse)
            row |= {
                "accuracy": ev["eval_accuracy"],
                "length_spearman": ev["eval_length_spearman"],
                "ruler_flag": ev.get("ruler_flag"),
                "ruler_best_rule": ev.get("ruler_best_rule"),
                "ruler_longer_accuracy": ev.get("ruler_longer_accuracy"),
                "ruler_style_accuracy": ev.get("ruler_style_accuracy"),
                "eval_pairs": ev["eval_pairs"],
                "wall_s": ev.get("wall_s"),
                "cpu_s": ev.get("cpu_s"),
            }
            if style is not None:
                row["style_spearman"] = style_spearman(out, tb.test, style, self.opt(tb, "max_length"), a.device)
        except RunFailed as e:
            row["error"] = str(e)
        self.add(row)

    def dpo(self, tb: Testbed, loss: str, seed: int, judge: Path | None) -> None:
        a = self.args
        out = a.work / tb.name / "dpo" / f"{loss}-s{seed}"
        flags = ["--data", str(tb.train), *self.common(tb, seed, self.opt(tb, "dpo_steps")), "--loss-type", loss,
                 *DEFAULTS[tb.name]["dpo"], *a.dpo_flags]  # fmt: skip
        row: dict[str, Any] = {"testbed": tb.name, "kind": "dpo", "method": loss, "seed": seed, "dir": str(out)}
        try:
            ev = train_cli("dpo", flags, out, a.reuse)
            row |= {
                "accuracy": ev["eval_accuracy"],
                "margin": ev["eval_margin"],
                "eval_pairs": ev["eval_pairs"],
                "wall_s": ev.get("wall_s"),
                "cpu_s": ev.get("cpu_s"),
            }
            if judge is not None:
                eflags = ["--policy", str(out), "--reference", tb.model, "--reward-model", str(judge),
                          "--prompts", str(tb.test), "--num-prompts", str(self.opt(tb, "judge_prompts")),
                          "--max-new-tokens", str(self.opt(tb, "max_new_tokens")), "--seed", str(seed)]  # fmt: skip
                # evaluate has no --device (it takes the GPU when there is one): hide the GPU for --device cpu.
                env = (os.environ | {"CUDA_VISIBLE_DEVICES": ""}) if a.device == "cpu" else None
                s = train_cli("evaluate", eflags, out.with_name(f"{out.name}-eval"), a.reuse, env)
                row |= {
                    "judge": str(judge),
                    "length_change": s["length_change"],
                    "length_change_pct": s["length_change_pct"],
                    "win_rate": s["win_rate"],
                    "win_rate_lc": s["win_rate_length_controlled"],
                    "win_rate_length_matched": s["win_rate_length_matched"],
                    "judged_prompts": s["pairs"],
                    "wall_s": (row["wall_s"] or 0) + (s.get("wall_s") or 0),
                    "cpu_s": (row["cpu_s"] or 0) + (s.get("cpu_s") or 0),
                }
        except RunFailed as e:
            row["error"] = str(e)
        self.add(row)

    def run_testbed(self, tb: Testbed) -> None:
        a = self.args
        self.testbeds[tb.name] = {
            "title": tb.title,
            "model": tb.model,
            "train": str(tb.train),
            "unbiased": str(tb.unbiased),
            "test": str(tb.test),
            **tb.info,
            "steps": self.opt(tb, "steps"),
            "dpo_steps": self.opt(tb, "dpo_steps"),
            "max_length": self.opt(tb, "max_length"),
        }
        style = None
        if a.style:
            from annotate.audit_ruler import fit_style_model

            biased = _rows(tb.train)
            style = fit_style_model([_text(r["chosen"]) for r in biased], [_text(r["rejected"]) for r in biased])
        for seed in a.seeds:
            self.reward(tb, "reference", "none", seed, style)
        for method in a.methods:
            for seed in a.seeds:
                self.reward(tb, "reward", method, seed, style)
        judge = a.judge if tb.name == "hh" and a.judge else None
        if judge is None and a.train_judge:
            first = a.work / tb.name / "reference" / f"none-s{a.seeds[0]}"
            judge = first if (first / "eval.json").exists() else None
        self.testbeds[tb.name]["judge"] = str(judge) if judge else None
        for loss in a.losses:
            for seed in a.seeds:
                self.dpo(tb, loss, seed, judge)


# -- summary, check, outputs ------------------------------------------------------------------------------------
def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (testbed, kind, method): each metric's mean, spread (sample standard deviation, 0 for one seed) and
    count over the seeds that have it, and the ruler's flags (k of n)."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["testbed"], r["kind"], r["method"]), []).append(r)
    out = []
    for (testbed, kind, method), rs in groups.items():
        s: dict[str, Any] = {
            "testbed": testbed,
            "kind": kind,
            "method": method,
            "seeds": len(rs),
            "errors": sum("error" in r for r in rs),
        }
        for m in METRICS:
            vals = [r[m] for r in rs if _finite(r.get(m))]
            if vals:
                s[m] = {
                    "mean": statistics.fmean(vals),
                    "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                    "n": len(vals),
                }
        flags = [r["ruler_flag"] for r in rs if r.get("ruler_flag") is not None]
        if flags:
            s["flagged"], s["flag_runs"] = sum(map(bool, flags)), len(flags)
        out.append(s)
    return out


def _mean(s: dict[str, Any] | None, m: str) -> float:
    return s[m]["mean"] if s and m in s else math.nan


def check(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 14's bar per reward method: mean accuracy >= 90% of the reference's and mean reward-length Spearman
    within 0.05 of it; `seeds_meeting` applies the same bar seed by seed (method seed s against reference seed s)."""
    out = []
    for testbed in dict.fromkeys(s["testbed"] for s in summary):
        ref = next((s for s in summary if s["testbed"] == testbed and s["kind"] == "reference"), None)
        ref_by_seed = {r["seed"]: r for r in rows if r["testbed"] == testbed and r["kind"] == "reference"}
        for s in summary:
            if s["testbed"] != testbed or s["kind"] != "reward":
                continue
            ratio = _mean(s, "accuracy") / _mean(ref, "accuracy") if _mean(ref, "accuracy") else math.nan
            gap = abs(_mean(s, "length_spearman") - _mean(ref, "length_spearman"))
            mine = [r for r in rows if (r["testbed"], r["kind"], r["method"]) == (testbed, "reward", s["method"])]
            per_seed = [_seed_meets(r, ref_by_seed.get(r["seed"])) for r in mine]
            per_seed = [m for m in per_seed if m is not None]
            out.append(
                {
                    "testbed": testbed,
                    "method": s["method"],
                    "accuracy_ratio": ratio,
                    "spearman_gap": gap,
                    "meets": _meets(ratio, gap),
                    "seeds_meeting": sum(per_seed),
                    "seeds_checked": len(per_seed),
                }
            )
    return out


def _seed_meets(row: dict[str, Any], ref: dict[str, Any] | None) -> bool | None:
    """The bar for one seed against the reference of the same seed; None when either lacks a figure."""
    if ref is None or not all(_finite(x.get(k)) for x in (row, ref) for k in ("accuracy", "length_spearman")):
        return None
    ratio = row["accuracy"] / ref["accuracy"] if ref["accuracy"] else math.nan
    return _meets(ratio, abs(row["length_spearman"] - ref["length_spearman"]))


def _meets(ratio: float, gap: float) -> bool:
    return bool(ratio >= RECOVER_ACCURACY and gap <= RECOVER_SPEARMAN)  # NaN compares False: not met


def check_lines(checks: list[dict[str, Any]]) -> list[str]:
    return [
        f"{c['testbed']} {c['method']}: {_fmt(c['accuracy_ratio'])} of the unbiased model's held-out accuracy "
        f"(needs >= {RECOVER_ACCURACY}), reward-length Spearman {_fmt(c['spearman_gap'])} from it (needs <= "
        f"{RECOVER_SPEARMAN}): {'MEETS' if c['meets'] else 'does not meet'} the bar "
        f"({c['seeds_meeting']} of {c['seeds_checked']} seeds meet it alone)"
        for c in checks
    ]


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, bool):
        return str(x)
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _cell(s: dict[str, Any], m: str, digits: int = 3) -> str:
    if m not in s:
        return "n/a"
    v = s[m]
    return _fmt(v["mean"], digits) + (f" ± {_fmt(v['sd'], digits)}" if v["n"] > 1 else "")


def markdown(bench: Bench, summary: list[dict[str, Any]], checks: list[dict[str, Any]]) -> str:
    a = bench.args
    lines = [
        "# Length debiasing, every method side by side (bench/debias.py)",
        "",
        f"    python bench/debias.py {' '.join(sys.argv[1:])}",
        "",
        f"Seeds {', '.join(map(str, a.seeds))}; mean ± sample standard deviation over seeds. Accuracy is on "
        "held-out pairs with their true labels (ties half); Spearman is the reward against response length "
        "(tokens) or against the style-only model's score, over the held-out responses.",
        "",
    ]
    for name, tb in bench.testbeds.items():
        lines += [f"## {tb['title']}", "", _testbed_line(name, tb), ""]
        rows = [s for s in summary if s["testbed"] == name]
        rw = [s for s in rows if s["kind"] == "reference"] + [s for s in rows if s["kind"] == "reward"]
        by_method = {c["method"]: c for c in checks if c["testbed"] == name}
        lines += [
            "| reward model (`--length-debias`) | held-out accuracy | reward-length Spearman | "
            "reward-style Spearman | flagged by the ruler | recovers (>= 90% accuracy, Spearman +-0.05) |",
            "|---|---|---|---|---|---|",
        ]
        for s in rw:
            label = "none on the **unbiased** labels (reference)" if s["kind"] == "reference" else f"`{s['method']}`"
            c = by_method.get(s["method"]) if s["kind"] == "reward" else None
            rec = "-"
            if c is not None:
                rec = (f"{'**yes**' if c['meets'] else 'no'} ({_fmt(c['accuracy_ratio'], 2)} of accuracy, Spearman "
                       f"gap {_fmt(c['spearman_gap'], 2)})")  # fmt: skip
            flagged = f"{s['flagged']} of {s['flag_runs']}" if "flagged" in s else "n/a"
            err = f" ({s['errors']} failed)" if s["errors"] else ""
            lines.append(
                f"| {label}{err} | {_cell(s, 'accuracy')} | {_cell(s, 'length_spearman', 2)} | "
                f"{_cell(s, 'style_spearman', 2)} | {flagged} | {rec} |"
            )
        dpo = [s for s in rows if s["kind"] == "dpo"]
        if dpo:
            judge = tb.get("judge")
            lines += [
                "",
                f"DPO (judge: {judge or 'none given: no generation, no win rate'}):",
                "",
                "| DPO loss (`--loss-type`) | held-out implicit-reward accuracy | length change vs start "
                "(tokens) | length-controlled win rate | win rate |",
                "|---|---|---|---|---|",
            ]
            for s in dpo:
                err = f" ({s['errors']} failed)" if s["errors"] else ""
                lines.append(
                    f"| `{s['method']}`{err} | {_cell(s, 'accuracy')} | {_cell(s, 'length_change', 1)} | "
                    f"{_cell(s, 'win_rate_lc')} | {_cell(s, 'win_rate')} |"
                )
        lines.append("")
    if checks:
        lines += ["## The bar (issue 14)", ""] + [f"- {x}" for x in check_lines(checks)] + [""]
    return "\n".join(lines)


def _testbed_line(name: str, tb: dict[str, Any]) -> str:
    share = lambda k: f"{tb[k]:.0%}" if _finite(tb.get(k)) else "n/a"  # noqa: E731
    if name == "hh":
        data = (
            f"{tb['pairs']} training pairs, {tb['relabelled']} relabelled to the longer response (chosen longer "
            f"{share('chosen_longer_before')} -> {share('chosen_longer_after')}); {tb['test_pairs']} held-out "
            f"pairs with the original labels (chosen longer {share('chosen_longer_test')})"
        )
    else:
        data = (
            f"{tb['train_pairs']} training pairs (chosen longer {share('chosen_longer_train')}; "
            f"{share('chosen_longer_unbiased')} in the unbiased set); {tb['test_pairs']} held-out pairs (chosen "
            f"longer {share('chosen_longer_test')})"
        )
    return (
        f"{data}. Model `{tb['model']}`, {tb['steps']} reward steps, {tb['dpo_steps']} DPO steps, max length "
        f"{tb['max_length']} tokens (longer pairs dropped, counted in each run's log)."
    )


def _frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The Pareto frontier: points no other point beats on both (lower x, higher y), by increasing x."""
    best, out = -math.inf, []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            out.append((x, y))
            best = y
    return out


def plot(bench: Bench, summary: list[dict[str, Any]], path: Path) -> None:
    """One row per testbed: reward models (accuracy against distance from the unbiased model's reward-length
    correlation) and DPO losses (length-controlled win rate against |length change|, or implicit-reward accuracy
    without a judge)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(bench.testbeds)
    fig, axes = plt.subplots(max(1, len(names)), 2, figsize=(12, 4.6 * max(1, len(names))), squeeze=False)
    for (ax_r, ax_d), name in zip(axes, names):
        rows = [s for s in summary if s["testbed"] == name]
        ref = next((s for s in rows if s["kind"] == "reference"), None)
        ref_sp, ref_acc = _mean(ref, "length_spearman"), _mean(ref, "accuracy")
        pts = []
        for s in rows:
            if s["kind"] not in ("reward", "reference") or "accuracy" not in s or "length_spearman" not in s:
                continue
            x = abs(s["length_spearman"]["mean"] - (ref_sp if math.isfinite(ref_sp) else 0.0))
            y = s["accuracy"]["mean"]
            is_ref = s["kind"] == "reference"
            ax_r.errorbar(x, y, xerr=s["length_spearman"]["sd"], yerr=s["accuracy"]["sd"], fmt="*" if is_ref else "o",
                          ms=12 if is_ref else 7, color="black" if is_ref else None, capsize=3)  # fmt: skip
            ax_r.annotate("unbiased (reference)" if is_ref else s["method"], (x, y), textcoords="offset points",
                          xytext=(5, 5), fontsize=8)  # fmt: skip
            if not is_ref:  # the frontier is the methods' trade-off; the reference is the target
                pts.append((x, y))
        if len(pts) > 1:
            ax_r.plot(*zip(*_frontier(pts)), color="grey", lw=1, ls=":", label="Pareto frontier of the methods")
        if math.isfinite(ref_acc):
            # The issue-14 bar: a method inside this box recovers the unbiased model.
            ax_r.fill_between([0, RECOVER_SPEARMAN], RECOVER_ACCURACY * ref_acc, max(1.0, ref_acc), color="tab:green",
                              alpha=0.15, label=">= 90% of its accuracy, Spearman within 0.05")  # fmt: skip
        ax_r.set(
            xlabel="|reward-length Spearman - the unbiased model's| (lower is better)",
            ylabel="held-out accuracy, true labels",
            title=f"{name}: reward models (mean ± sd over seeds)",
        )
        ax_r.legend(fontsize=7, loc="lower right")
        dpo = [s for s in rows if s["kind"] == "dpo"]
        judged = [s for s in dpo if "win_rate_lc" in s and "length_change" in s]
        if judged:
            pts = []
            for s in judged:
                x, y = abs(s["length_change"]["mean"]), s["win_rate_lc"]["mean"]
                ax_d.errorbar(x, y, xerr=s["length_change"]["sd"], yerr=s["win_rate_lc"]["sd"], fmt="o", capsize=3)
                ax_d.annotate(s["method"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
                pts.append((x, y))
            if len(pts) > 1:
                ax_d.plot(*zip(*_frontier(pts)), color="grey", lw=1, ls=":", label="Pareto frontier")
            ax_d.axhline(0.5, color="grey", lw=0.8)
            ax_d.set(
                xlabel="|mean length change vs the starting model| (judge's tokens)",
                ylabel="length-controlled win rate vs the starting model",
                title=f"{name}: DPO (judged)",
            )
        elif dpo:
            xs = range(len(dpo))
            ax_d.errorbar(
                xs,
                [_mean(s, "accuracy") for s in dpo],
                yerr=[s["accuracy"]["sd"] if "accuracy" in s else 0 for s in dpo],
                fmt="o",
                capsize=3,
            )
            ax_d.set_xticks(list(xs), [s["method"] for s in dpo])
            ax_d.set(ylabel="held-out implicit-reward accuracy", ylim=(0, 1.02),
                     title=f"{name}: DPO (no judge: no length change)")  # fmt: skip
        else:
            ax_d.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_json(bench: Bench) -> Path:
    from annotate.jsonutil import to_jsonable

    summary = summarise(bench.rows)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(bench.args).items()}
    data = {
        "command": ["bench/debias.py", *sys.argv[1:]],
        "settings": settings,
        "testbeds": bench.testbeds,
        "rows": bench.rows,
        "summary": summary,
        "check": check(bench.rows, summary),
    }
    path = bench.args.out / "debias.json"
    path.write_text(json.dumps(to_jsonable(data), indent=1, allow_nan=False) + "\n")
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--testbeds", nargs="+", choices=["synthetic", "hh"], default=["synthetic", "hh"])
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="reward --length-debias")
    p.add_argument(
        "--losses",
        nargs="*",
        default=list(LOSSES),
        help="dpo --loss-type (none: no DPO rows)",
        choices=[*LOSSES, "ipo"],
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2])
    p.add_argument("--steps", type=int, default=None, help="reward optimizer steps (synthetic 150, hh 80)")
    p.add_argument("--dpo-steps", type=int, default=None, help="DPO optimizer steps (synthetic 60, hh 40)")
    p.add_argument(
        "--max-length", type=int, default=None, help="tokens per pair, longer dropped (synthetic 512, hh 256)"
    )
    p.add_argument("--model", default=None, help="for every testbed (default: the tiny model / 'default' SmolLM2)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--plant", type=float, default=0.3, help="hh: share of training pairs relabelled to the longer")
    p.add_argument("--plant-seed", type=int, default=0, help="hh: which pairs are relabelled")
    p.add_argument("--hh", type=Path, default=HH_SAMPLE, help="the HH-RLHF sample (.jsonl.gz)")
    p.add_argument("--judge", type=Path, default=None, help="hh: a reward model trained on the unbiased labels")
    p.add_argument(
        "--train-judge",
        action="store_true",
        help="judge DPO policies with each testbed's reference reward model (unbiased labels, first seed)",
    )
    p.add_argument("--judge-prompts", type=int, default=None, help="held-out prompts judged (synthetic 20, hh 48)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="judged answers' length cap (synthetic 8, hh 64)")
    p.add_argument("--no-style", dest="style", action="store_false", help="skip the reward-style Spearman")
    p.add_argument(
        "--reward-flags",
        type=shlex.split,
        default=[],
        help='extra flags for every reward run, one string: --reward-flags="--gradient-checkpointing true"',
    )
    p.add_argument("--dpo-flags", type=shlex.split, default=[], help="extra flags for every DPO run, one string")
    p.add_argument("--out", type=Path, default=Path("/tmp/debias"), help="debias.json, debias.md, debias.png")
    p.add_argument("--work", type=Path, default=None, help="data and run directories (default OUT/work)")
    p.add_argument("--reuse", action="store_true", help="keep runs already finished in --work with the same flags")
    args = p.parse_args(argv)
    args.out = args.out.resolve()
    args.work = (args.work or args.out / "work").resolve()
    if args.judge is not None:
        args.judge = args.judge.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the default model comes from the local cache, as in the tests
    args.out.mkdir(parents=True, exist_ok=True)
    bench = Bench(args)
    failed = False
    for name in args.testbeds:
        try:
            if name == "synthetic":
                tb = synthetic_testbed(args.work, args.model)
            else:
                tb = hh_testbed(args.work, args.model, args.hh, args.plant, args.plant_seed)
        except (RunFailed, ValueError) as e:  # a testbed whose data cannot be built: the others still run
            print(f"[debias] the {name} testbed could not be prepared: {e}", flush=True)
            failed = True
            continue
        if tb is not None:
            bench.run_testbed(tb)
    write_json(bench)
    summary = summarise(bench.rows)
    checks = check(bench.rows, summary)
    text = markdown(bench, summary, checks)
    (args.out / "debias.md").write_text(text)
    plot(bench, summary, args.out / "debias.png")
    print(text)
    print(f"[debias] {args.out / 'debias.json'}, {args.out / 'debias.md'}, {args.out / 'debias.png'}")
    return 1 if failed or any("error" in r for r in bench.rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
