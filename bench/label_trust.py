"""Annotator reliability into training (issue 16, item 3): a reward model trained on Dawid-Skene soft labels against
one trained on the majority vote, on HH pairs voted by simulated annotators, scored on the pairs' true labels.

    # smoke size (a couple of minutes on one core): a config-built tiny model, a few steps, one seed
    .venv/bin/python bench/label_trust.py --tiny --pairs 120 --steps 3 --seeds 1 --out /tmp/label-trust-smoke
    # the benchmark (BENCHMARKS.md, "Label trust"): the default model, one epoch per run, three seeds
    .venv/bin/python bench/label_trust.py --seeds 42 1 2 --out bench/results/label_trust --work /tmp/label-trust

Data: the HH-RLHF harmless sample (../shared/data), read by the project's importer (annotate.importers.read_hh; each
record's chosen response is the true label) and split by prompt with annotate.split (--test-fraction, seed 0). The
training pairs are voted by a simulated crowd (`crowd`): reliable annotators (right with --reliable-accuracy),
and, for --unreliable-share of the votes (30% by default), a random clicker, an adversarial flipper (right with
1 - --reliable-accuracy) and one who always picks the longer response. Each pair gets --votes votes from distinct
annotators, in a random order on screen (a placed vote: `left` random); the votes go into a real store
(annotate.store.ComparisonStore, one per seed), which is exported as users do (annotate.export.export, `--aggregate
majority` and `dawid-skene`). Held-out prompts get no votes: their file holds the true labels.

Arms (--arms): majority (the majority export, hard labels: `--label-trust off`), dawid-skene (the Dawid-Skene export,
soft labels: `--label-trust on`), and optionally majority-soft, dawid-skene-hard, weighted (soft) and truth (the true
training labels: the ceiling). Each is `python rlhf/train.py reward` as a subprocess with the same seed and steps.
Per arm and seed: held-out accuracy on the true labels (eval.json), and the training labels' accuracy against the
truth (the export's chosen response = the HH chosen one). Writes label_trust.json (every run, per-arm mean and
standard deviation over seeds, the settings) and label_trust.md (the table, also printed) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # annotate/, rlhf/, and the tiny-model fixtures of tests/

HH_SAMPLE = REPO.parent / "shared/data/hh-rlhf-harmless-sample.jsonl.gz"
# arm -> (export --aggregate or "truth", reward --label-trust)
ARMS = {
    "majority": ("majority", "off"),
    "dawid-skene": ("dawid-skene", "on"),
    "majority-soft": ("majority", "on"),
    "dawid-skene-hard": ("dawid-skene", "off"),
    "weighted": ("weighted", "on"),
    "truth": ("truth", "off"),
}


@dataclass(frozen=True)
class Annotator:
    name: str
    kind: str  # reliable, random, flipper, longer
    accuracy: float = 0.5  # P(picks the better response): reliable and flipper only


@dataclass(frozen=True)
class Pair:
    prompt_id: str
    prompt: list[dict[str, str]]
    better: str  # the true label's response
    worse: str


def crowd(reliable: int = 7, accuracy: float = 0.85) -> list[Annotator]:
    """`reliable` reliable annotators and the three unreliable kinds of issue 16 (a random clicker, an adversarial
    flipper whose accuracy mirrors the reliable ones', one who always picks the longer response)."""
    good = [Annotator(f"reliable{i}", "reliable", accuracy) for i in range(1, reliable + 1)]
    return [*good, Annotator("random", "random"), Annotator("flipper", "flipper", 1.0 - accuracy),
            Annotator("longer", "longer")]  # fmt: skip


def picks_better(who: Annotator, pair: Pair, u: float) -> bool:
    """Whether `who` votes for the better response of `pair`, with `u` a uniform draw."""
    if who.kind == "longer":
        if len(pair.better) == len(pair.worse):
            return u < 0.5
        return len(pair.better) > len(pair.worse)
    return u < who.accuracy


def simulate_votes(
    pairs: list[Pair], annotators: list[Annotator], *, seed: int, votes: int = 3, unreliable_share: float = 0.3
) -> list[dict]:
    """Comparison records (annotate.schema.new_comparison): `votes` distinct annotators per pair, drawn so that
    unreliable annotators cast about `unreliable_share` of the votes; each vote shows the pair in a random order and
    places response a on a random side."""
    from annotate.importers import response_id_for
    from annotate.schema import new_comparison

    rng = np.random.default_rng(seed)
    bad = np.array([a.kind != "reliable" for a in annotators])
    if votes > len(annotators) or not 0.0 <= unreliable_share < 1.0 or bad.all() or not bad.any():
        raise ValueError("simulate_votes: need reliable and unreliable annotators, votes <= crowd, share in [0, 1)")
    w = np.where(bad, unreliable_share / bad.sum(), (1.0 - unreliable_share) / (~bad).sum())
    records = []
    for pair in pairs:
        ids = {t: response_id_for(pair.prompt_id, t) for t in (pair.better, pair.worse)}
        for k in rng.choice(len(annotators), size=votes, replace=False, p=w):
            who = annotators[k]
            better_is_a, left, u = rng.random() < 0.5, "a" if rng.random() < 0.5 else "b", rng.random()
            a, b = (pair.better, pair.worse) if better_is_a else (pair.worse, pair.better)
            records.append(new_comparison(
                prompt_id=pair.prompt_id, prompt=pair.prompt, response_a_id=ids[a], response_a=a,
                response_b_id=ids[b], response_b=b, choice="a" if picks_better(who, pair, u) == better_is_a else "b",
                annotator=who.name, left=left, session=f"simulated:{seed}"))  # fmt: skip
    return records


def write_store(records: list[dict], root: Path) -> Path:
    """A fresh comparison store at `root` holding `records`, sealed into a version (what export reads)."""
    from annotate.store import ComparisonStore

    shutil.rmtree(root, ignore_errors=True)
    store = ComparisonStore(root)
    store.write_batch(records)
    store.close()
    return root


def truth_rows(pairs: list[Pair]) -> list[dict]:
    """Pairs as export-shaped preference rows labelled with the truth."""
    from annotate.importers import response_id_for

    return [{"prompt": p.prompt, "chosen": [{"role": "assistant", "content": p.better}],
             "rejected": [{"role": "assistant", "content": p.worse}], "prompt_id": p.prompt_id,
             "chosen_id": response_id_for(p.prompt_id, p.better),
             "rejected_id": response_id_for(p.prompt_id, p.worse)} for p in pairs]  # fmt: skip


def label_accuracy(export_file: Path, pairs: list[Pair]) -> dict[str, float]:
    """How the export's labels compare with the truth: accuracy of chosen, pairs kept, mean p_chosen."""
    import pyarrow.parquet as pq

    truth = {(r["prompt_id"], r["chosen_id"]) for r in truth_rows(pairs)}
    rows = pq.read_table(export_file, columns=["prompt_id", "chosen_id", "p_chosen"]).to_pylist()
    right = [(r["prompt_id"], r["chosen_id"]) in truth for r in rows]
    return {"label_accuracy": sum(right) / max(len(rows), 1), "pairs": len(rows),
            "mean_p_chosen": float(np.mean([r["p_chosen"] for r in rows])) if rows else float("nan")}  # fmt: skip


def hh_pairs(path: Path, test_fraction: float) -> tuple[list[Pair], list[Pair]]:
    """(train, held-out) pairs of the HH sample, split by prompt with annotate.split (seed 0); duplicates dropped."""
    from annotate.importers import drop_duplicates, read_hh
    from annotate.schema import prompt_id_for
    from annotate.split import held_out, split_score

    rows, _ = read_hh(path)
    rows, _ = drop_duplicates(rows)
    pairs = [Pair(prompt_id_for(p), p, c, r) for _, p, c, r in rows]
    test = held_out({p.prompt_id: split_score(p.prompt, 0) for p in pairs}, test_fraction)
    return [p for p in pairs if p.prompt_id not in test], [p for p in pairs if p.prompt_id in test]


def write_parquet(rows: list[dict], path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def tiny_model(work: Path) -> str:
    """A config-built two-layer Llama around the default model's tokenizer (so it reads the same chat template)."""
    from fixtures import save_tiny_model

    from rlhf.models import load_tokenizer

    out = work / "tiny-model"
    if not (out / "config.json").exists():
        save_tiny_model(out, load_tokenizer("default"), layers=2, hidden=64, heads=4)
    return str(out)


def train_reward(flags: list[str], out: Path) -> dict[str, Any]:
    """`python rlhf/train.py reward FLAGS --output-dir OUT` (log next to OUT); its eval.json and the wall time."""
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, str(REPO / "rlhf/train.py"), "reward", *flags, "--output-dir", str(out)]
    log = out.parent / f"{out.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    with log.open("w") as f:
        code = subprocess.run(argv, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"reward run exited {code}; the end of {log}:\n{tail}")
    return json.loads((out / "eval.json").read_text()) | {"wall_s": round(time.perf_counter() - t, 1)}


def run_seed(args: argparse.Namespace, seed: int, train: list[Pair], test_file: Path, model: str) -> list[dict]:
    """One seed: simulate the votes, store and export them, train every arm; one row per arm."""
    from annotate.export import export

    work = args.work / f"seed{seed}"
    annotators = crowd(args.reliable, args.reliable_accuracy)
    records = simulate_votes(train, annotators, seed=seed, votes=args.votes, unreliable_share=args.unreliable_share)
    unreliable = {a.name for a in annotators if a.kind != "reliable"}
    share = sum(r["annotator"] in unreliable for r in records) / len(records)
    store = write_store(records, work / "store")
    files: dict[str, Path] = {"truth": write_parquet(truth_rows(train), work / "truth-train.parquet")}
    rows = []
    for arm in args.arms:
        method, trust = ARMS[arm]
        if method not in files:
            files[method] = Path(export(str(store), work / f"{method}.parquet", method=method)["files"][0])
        flags = ["--model", model, "--data", str(files[method]), "--eval-data", str(test_file), "--seed", str(seed),
                 "--label-trust", trust, "--max-steps", str(args.steps), "--max-length", str(args.max_length),
                 "--learning-rate", str(args.learning_rate), "--per-device-train-batch-size", str(args.batch_size),
                 "--gradient-accumulation-steps", str(args.grad_accum), "--logging-steps", "10",
                 *args.reward_flags]  # fmt: skip
        result = train_reward(flags, work / "runs" / arm)
        labels = label_accuracy(files[method], train) if method != "truth" else {"label_accuracy": 1.0}
        rows.append({"arm": arm, "seed": seed, "aggregate": method, "label_trust": trust,
                     "accuracy": result["eval_accuracy"], "label_trust_used": result.get("label_trust"),
                     "unreliable_vote_share": share, "votes": len(records), "wall_s": result["wall_s"],
                     **labels})  # fmt: skip
        print(f"[label-trust] seed {seed} {arm}: held-out accuracy {result['eval_accuracy']:.3f}, training labels "
              f"{labels['label_accuracy']:.3f} right ({result['wall_s']:.0f} s)", flush=True)  # fmt: skip
    return rows


def summarise(rows: list[dict], arms: list[str]) -> list[dict]:
    """Per arm: mean and standard deviation over seeds of the held-out and training-label accuracies."""
    out = []
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        acc, lab = [r["accuracy"] for r in mine], [r["label_accuracy"] for r in mine]
        sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else float("nan")  # noqa: E731
        out.append({"arm": arm, "seeds": len(mine), "accuracy_mean": statistics.fmean(acc), "accuracy_sd": sd(acc),
                    "accuracy_by_seed": acc, "label_accuracy_mean": statistics.fmean(lab),
                    "label_accuracy_sd": sd(lab)})  # fmt: skip
    return out


def markdown(summary: list[dict], settings: dict[str, Any], command: str) -> str:
    pm = lambda m, s: f"{m:.3f}" + ("" if s != s else f" ± {s:.3f}")  # noqa: E731  (s != s: NaN, one seed)
    lines = [
        f"    {command}",
        "",
        f"HH harmless sample: {settings['train_pairs']} training pairs voted {settings['votes']} times each by "
        f"{settings['reliable']} reliable annotators (accuracy {settings['reliable_accuracy']}), a random one, a "
        f"flipper and an always-longer one ({settings['unreliable_share']:.0%} of votes unreliable); held-out "
        f"{settings['test_pairs']} pairs with their true labels; model {settings['model']}, "
        f"{settings['steps']} steps per run (-1: one epoch).",
        "",
        "| arm | held-out accuracy (true labels), mean ± sd | per seed | training labels right, mean ± sd |",
        "|---|---|---|---|",
    ]
    for s in summary:
        seeds = ", ".join(f"{a:.3f}" for a in s["accuracy_by_seed"])
        lines.append(f"| {s['arm']} | {pm(s['accuracy_mean'], s['accuracy_sd'])} | {seeds} | "
                     f"{pm(s['label_accuracy_mean'], s['label_accuracy_sd'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=["majority", "dawid-skene"])
    p.add_argument("--seeds", nargs="+", type=int, default=[42, 1, 2], help="each: new votes and a new training seed")
    p.add_argument("--model", default="default", help="Hub id or local path (default: the project's default model)")
    p.add_argument("--tiny", action="store_true", help="a config-built two-layer model instead (CPU in minutes)")
    p.add_argument("--pairs", type=int, default=0, help="use only the first N training pairs (0: all)")
    p.add_argument("--test-fraction", type=float, default=0.1, help="share of prompts held out (true labels)")
    p.add_argument("--votes", type=int, default=3, help="votes per training pair, from distinct annotators")
    p.add_argument("--reliable", type=int, default=7, help="reliable annotators in the crowd")
    p.add_argument("--reliable-accuracy", type=float, default=0.85, help="P(a reliable vote picks the true label)")
    p.add_argument("--unreliable-share", type=float, default=0.3, help="share of votes from unreliable annotators")
    p.add_argument("--steps", type=int, default=-1, help="reward optimizer steps per run (-1: one epoch)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per pair; longer pairs are dropped")
    p.add_argument("--learning-rate", type=float, default=None, help="default 2e-5 (1e-3 with --tiny)")
    p.add_argument("--batch-size", type=int, default=None, help="pairs per device step (default 4; 16 with --tiny)")
    p.add_argument("--grad-accum", type=int, default=None, help="gradient accumulation (default 2; 1 with --tiny)")
    p.add_argument("--reward-flags", type=str.split, default=[], help="extra flags for every reward run, one string")
    p.add_argument("--hh", type=Path, default=HH_SAMPLE, help="the HH-RLHF sample (.jsonl.gz)")
    p.add_argument("--out", type=Path, default=Path("/tmp/label-trust"), help="label_trust.json and .md")
    p.add_argument("--work", type=Path, default=None, help="stores, exports and run directories (default OUT/work)")
    args = p.parse_args(argv)
    for name, full, tiny in (("learning_rate", 2e-5, 1e-3), ("batch_size", 4, 16), ("grad_accum", 2, 1)):
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    args.out = args.out.resolve()
    args.work = (args.work or args.out / "work").resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the default model comes from the local cache, as in the tests
    if not args.hh.exists():
        print(f"[label-trust] {args.hh} is not there (the HH-RLHF sample belongs in ../shared/data)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    train, test = hh_pairs(args.hh, args.test_fraction)
    train = train[: args.pairs] if args.pairs else train
    test_file = write_parquet(truth_rows(test), args.work / "truth-test.parquet")
    model = tiny_model(args.work) if args.tiny else args.model
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings |= {"train_pairs": len(train), "test_pairs": len(test),
                 "model": "tiny (2 layers)" if args.tiny else model,
                 "crowd": [asdict(a) for a in crowd(args.reliable, args.reliable_accuracy)]}  # fmt: skip
    command = "python bench/label_trust.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows: list[dict] = []
    for seed in args.seeds:
        rows += run_seed(args, seed, train, test_file, model)
        summary = summarise(rows, args.arms)  # rewritten after every seed: an interrupted run keeps what it did
        bench = {"settings": settings, "command": command, "summary": summary, "rows": rows}
        (args.out / "label_trust.json").write_text(json.dumps(bench, indent=2) + "\n")
    text = markdown(summarise(rows, args.arms), settings, command)
    (args.out / "label_trust.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
