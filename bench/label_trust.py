"""Annotator reliability into training (issue 16, item 3): a reward model trained on Dawid-Skene soft labels against
one trained on the majority vote, on HH pairs voted by simulated annotators, scored on the pairs' true labels.

    # smoke size (a couple of minutes on one core): a config-built tiny model, a few steps, one seed
    .venv/bin/python bench/label_trust.py --tiny --pairs 120 --steps 3 --seeds 1 --out /tmp/label-trust-smoke
    # the benchmark (BENCHMARKS.md, "Label trust"): the default model, one epoch per run, three seeds (~1.5 h CPU)
    .venv/bin/python bench/label_trust.py --seeds 42 1 2 --test-fraction 0.3 --out bench/results/label_trust \
        --work /tmp/label-trust
    # the probe: every arm on the frozen default model's states, ten seeds (~6 min CPU, most of it reading states)
    .venv/bin/python bench/label_trust.py --probe --max-length 512 --test-fraction 0.3 --seeds 42 1 2 3 4 5 6 7 8 9 \
        --arms majority dawid-skene majority-soft dawid-skene-hard weighted truth \
        --out bench/results/label_trust_probe --work /tmp/lt/work

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
training labels: the ceiling). Each is `python rlhf/train.py reward` as a subprocess with the same seed and steps,
or with --probe a Bradley-Terry head fitted on the frozen model's states (see "the probe" below). Per arm and seed:
held-out accuracy on the true labels (eval.json), the paired difference to the majority arm, and the training
labels' accuracy against the truth (the export's chosen response = the HH chosen one). Writes label_trust.json
(every run, per-arm mean and standard deviation over seeds, the settings), label_trust.md (the table, also printed)
and label_trust.png (every seed's accuracy per arm) to --out.
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


# -- the probe: a Bradley-Terry head on the frozen body, every arm and seed in seconds ----------------------------
#
# A full reward run of the default model costs 40-60 min on a 2-core CPU, so the benchmark's six runs (two arms,
# three seeds) did not fit any session without a GPU. The probe trains the same loss on the same labels with the
# body frozen: features are the body's state at each conversation's last token, read once through
# rlhf.reward.score (the one scoring path: chat template, true last token, length batches) with an identity head, so
# a fitted head w is exactly a reward model whose score head is w. The fit is convex (L2-regularised), so the arms
# differ only in their labels, and any number of vote seeds costs no more model time.


@dataclass
class Features:
    """Last-token states of each pair's two conversations; `kept` marks pairs within --max-length (both sides)."""

    better: np.ndarray  # (N, H)
    worse: np.ndarray  # (N, H)
    kept: np.ndarray  # (N,) bool


def pair_features(model: str, pairs: list[Pair], max_length: int, cache: Path) -> Features:
    """The frozen body's last-token state of every pair's better and worse conversation, cached in `cache` (.npz).
    Pairs longer than max_length on either side are marked not kept, as rlhf.data.drop_long drops them."""
    if cache.exists():
        with np.load(cache) as z:
            return Features(z["better"], z["worse"], z["kept"])
    import torch

    from rlhf.models import load_tokenizer
    from rlhf.reward import conversation_ids, load_reward_model, score

    tokenizer = load_tokenizer(model)
    probe = load_reward_model(model, tokenizer, num_labels=1)
    hidden = probe.score.in_features
    probe = load_reward_model(model, tokenizer, num_labels=hidden)  # a head as wide as the state it reads
    with torch.no_grad():
        probe.score.weight.copy_(torch.eye(hidden))  # identity: score(..., all_heads=True) is the state itself
    kept = np.array([max(len(conversation_ids(tokenizer, p.prompt, t)) for t in (p.better, p.worse)) <= max_length
                     for p in pairs])  # fmt: skip
    mine = [p for p, k in zip(pairs, kept) if k]
    states = score(probe, tokenizer, [p.prompt for p in mine] * 2, [p.better for p in mine] + [p.worse for p in mine],
                   batch_size=16, desc="last-token states", all_heads=True)  # fmt: skip
    states = np.asarray(states, dtype=np.float32)
    better, worse = (np.zeros((len(pairs), hidden), np.float32) for _ in range(2))
    better[kept], worse[kept] = states[: len(mine)], states[len(mine) :]
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, better=better, worse=worse, kept=kept)
    return Features(better, worse, kept)


def export_labels(export_file: Path, pairs: list[Pair]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pair of `pairs`: whether the export has it, whether its chosen side is the better response, and its
    p_chosen (nan where absent)."""
    import pyarrow.parquet as pq

    from annotate.importers import response_id_for

    rows = {
        r["prompt_id"]: r
        for r in pq.read_table(export_file, columns=["prompt_id", "chosen_id", "p_chosen"]).to_pylist()
    }  # fmt: skip  (one pair per prompt in the HH sample: hh_pairs drops duplicates)
    has = np.array([p.prompt_id in rows for p in pairs])
    better = np.array([p.prompt_id in rows and rows[p.prompt_id]["chosen_id"] == response_id_for(p.prompt_id, p.better)
                       for p in pairs])  # fmt: skip
    p_chosen = np.array([rows[p.prompt_id]["p_chosen"] if p.prompt_id in rows else np.nan for p in pairs])
    return has, better, p_chosen


def fit_head(diff: np.ndarray, p: np.ndarray | None, l2: float) -> np.ndarray:
    """The head w minimising mean_i loss_i(w . diff_i) + l2/2 |w|^2, diff_i = x_chosen - x_rejected: the reward
    model's loss with the body frozen. loss_i is rlhf.label_trust.bt_pair_loss, the trainer's: -log sigmoid(d) for
    hard labels (Ouyang et al. 2022, Eq. 1; p None), the soft-target cross-entropy for p (Bradley & Terry 1952).
    Strictly convex with l2 > 0: L-BFGS finds the one minimum."""
    import torch

    from rlhf.label_trust import bt_pair_loss

    x = torch.as_tensor(diff, dtype=torch.float64)
    labels = {} if p is None else {"p_chosen": torch.as_tensor(p, dtype=torch.float64)}
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = bt_pair_loss(x @ w, labels).mean() + 0.5 * l2 * (w @ w)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy()


def choose_l2(diff: np.ndarray, p: np.ndarray | None, grid: tuple[float, ...], folds: int = 5) -> float:
    """The L2 weight of `grid` with the lowest cross-validated loss on the arm's own training labels (never the
    held-out truth): each arm regularises as a user with only those labels would."""
    import torch

    from rlhf.label_trust import bt_pair_loss

    fold = np.arange(len(diff)) % folds
    best, best_loss = grid[0], float("inf")
    for l2 in grid:
        total = 0.0
        for k in range(folds):
            w = fit_head(diff[fold != k], None if p is None else p[fold != k], l2)
            d = torch.as_tensor(diff[fold == k] @ w)
            lab = {} if p is None else {"p_chosen": torch.as_tensor(p[fold == k])}
            total += float(bt_pair_loss(d, lab).sum())
        if total < best_loss:
            best, best_loss = l2, total
    return best


L2_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


def arm_head(feats: Features, better: np.ndarray, use: np.ndarray, p: np.ndarray | None) -> tuple[np.ndarray, float]:
    """(the head on raw states, its L2 weight) fitted on the pairs `use`, `better` saying whether each pair's chosen
    side is the better response and `p` its p_chosen (None: hard labels). Put into a one-output reward model's score
    head, the head makes score() give every conversation w . state."""
    sign = np.where(better[use], 1.0, -1.0)[:, None]  # chosen - rejected, in the labels' orientation
    # Standardised by the training states' spread (a shift would cancel in a pair's difference).
    sd = np.concatenate([feats.better[feats.kept], feats.worse[feats.kept]]).std(0) + 1e-6
    diff = sign * (feats.better[use] - feats.worse[use]) / sd
    l2 = choose_l2(diff, p, L2_GRID)
    return fit_head(diff, p, l2) / sd, l2


def probe_arm(feats: Features, test: Features, arm: str, export_file: Path | None, pairs: list[Pair]) -> dict:
    """Fit the probe head on one arm's training labels; held-out accuracy on the true labels."""
    method, trust = ARMS[arm]
    if export_file is None:  # truth
        has, better, p_chosen = np.ones(len(pairs), bool), np.ones(len(pairs), bool), np.ones(len(pairs))
    else:
        has, better, p_chosen = export_labels(export_file, pairs)
    use = has & feats.kept
    head, l2 = arm_head(feats, better, use, p_chosen[use] if trust == "on" and method != "truth" else None)
    d_test = (test.better[test.kept] - test.worse[test.kept]) @ head
    return {"accuracy": float((d_test > 0).mean()), "l2": l2, "pairs_trained": int(use.sum()),
            "test_pairs": int(test.kept.sum())}  # fmt: skip


def run_seed(
    args: argparse.Namespace,
    seed: int,
    train: list[Pair],
    test_file: Path,
    model: str,
    probe: tuple[Features, Features] | None = None,
) -> list[dict]:
    """One seed: simulate the votes, store and export them, train every arm (a full reward run, or with `probe` the
    (train, held-out) features' head); one row per arm."""
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
        labels = label_accuracy(files[method], train) if method != "truth" else {"label_accuracy": 1.0}
        if probe is not None:
            result = probe_arm(*probe, arm, None if method == "truth" else files[method], train)
            rows.append({"arm": arm, "seed": seed, "aggregate": method, "label_trust": trust, "probe": True,
                         "unreliable_vote_share": share, "votes": len(records), **result, **labels})  # fmt: skip
            print(f"[label-trust] seed {seed} {arm} (probe): held-out accuracy {result['accuracy']:.3f}, training "
                  f"labels {labels['label_accuracy']:.3f} right, l2 {result['l2']:g}", flush=True)  # fmt: skip
            continue
        flags = ["--model", model, "--data", str(files[method]), "--eval-data", str(test_file), "--seed", str(seed),
                 "--label-trust", trust, "--max-steps", str(args.steps), "--max-length", str(args.max_length),
                 "--learning-rate", str(args.learning_rate), "--per-device-train-batch-size", str(args.batch_size),
                 "--gradient-accumulation-steps", str(args.grad_accum), "--logging-steps", "10",
                 *args.reward_flags]  # fmt: skip
        result = train_reward(flags, work / "runs" / arm)
        rows.append({"arm": arm, "seed": seed, "aggregate": method, "label_trust": trust,
                     "accuracy": result["eval_accuracy"], "label_trust_used": result.get("label_trust"),
                     "unreliable_vote_share": share, "votes": len(records), "wall_s": result["wall_s"],
                     **labels})  # fmt: skip
        print(f"[label-trust] seed {seed} {arm}: held-out accuracy {result['eval_accuracy']:.3f}, training labels "
              f"{labels['label_accuracy']:.3f} right ({result['wall_s']:.0f} s)", flush=True)  # fmt: skip
    return rows


def paired_ci(diff: list[float]) -> tuple[float, float] | None:
    """95% t interval of the mean of per-seed differences (None under two seeds)."""
    from scipy.stats import t

    if len(diff) < 2:
        return None
    half = t.ppf(0.975, len(diff) - 1) * statistics.stdev(diff) / len(diff) ** 0.5
    return statistics.fmean(diff) - half, statistics.fmean(diff) + half


def summarise(rows: list[dict], arms: list[str]) -> list[dict]:
    """Per arm: mean and standard deviation over seeds of the held-out and training-label accuracies, and the paired
    difference to the majority arm (same seed: same votes, same held-out pairs): its mean, 95% interval, and the
    seeds where the arm beat, tied or lost to the majority."""
    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else float("nan")  # noqa: E731
    majority = {r["seed"]: r["accuracy"] for r in rows if r["arm"] == "majority"}
    out = []
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        if not mine:
            continue
        acc, lab = [r["accuracy"] for r in mine], [r["label_accuracy"] for r in mine]
        diff = [r["accuracy"] - majority[r["seed"]] for r in mine if r["seed"] in majority]
        record = [sum(d > 1e-9 for d in diff), sum(abs(d) <= 1e-9 for d in diff), sum(d < -1e-9 for d in diff)]
        out.append({"arm": arm, "seeds": len(mine), "accuracy_mean": statistics.fmean(acc), "accuracy_sd": sd(acc),
                    "accuracy_by_seed": acc, "label_accuracy_mean": statistics.fmean(lab),
                    "label_accuracy_sd": sd(lab), "vs_majority_mean": statistics.fmean(diff) if diff else None,
                    "vs_majority_ci95": paired_ci(diff), "vs_majority_wins_ties_losses": record})  # fmt: skip
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
        + (
            f"probe: a Bradley-Terry head on the frozen body's last-token states, L2 chosen by 5-fold CV on each "
            f"arm's training labels ({settings['train_pairs_kept']} training and {settings['test_pairs_kept']} "
            f"held-out pairs within {settings['max_length']} tokens)."
            if settings["probe"]
            else f"{settings['steps']} steps per run (-1: one epoch)."
        ),
        "",
        "| arm | held-out accuracy (true labels), mean ± sd | per seed | minus majority's, same seed: mean [95% CI] "
        "(wins/ties/losses) | training labels right, mean ± sd |",
        "|---|---|---|---|---|",
    ]
    for s in summary:
        seeds = ", ".join(f"{a:.3f}" for a in s["accuracy_by_seed"])
        paired = ""
        if s["vs_majority_mean"] is not None and s["arm"] != "majority":
            ci = s["vs_majority_ci95"]
            paired = f"{s['vs_majority_mean']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
            paired += " ({}/{}/{})".format(*s["vs_majority_wins_ties_losses"])
        lines.append(f"| {s['arm']} | {pm(s['accuracy_mean'], s['accuracy_sd'])} | {seeds} | {paired} | "
                     f"{pm(s['label_accuracy_mean'], s['label_accuracy_sd'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], summary: list[dict], path: Path) -> Path:
    """Held-out accuracy per arm: one dot per seed, lines joining each seed's arms (the pairing), the mean marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [s["arm"] for s in summary]
    fig, ax = plt.subplots(figsize=(1.4 * len(arms) + 2, 4))
    for seed in sorted({r["seed"] for r in rows}):
        mine = {r["arm"]: r["accuracy"] for r in rows if r["seed"] == seed}
        xs = [i for i, a in enumerate(arms) if a in mine]
        ax.plot(xs, [mine[arms[i]] for i in xs], color="0.75", lw=0.8, marker="o", ms=3, zorder=1)
    means = [s["accuracy_mean"] for s in summary]  # a short line, not a bar: the axis does not start at 0
    ax.hlines(means, [i - 0.25 for i in range(len(arms))], [i + 0.25 for i in range(len(arms))], color="C0", lw=2.5)
    for i, m in enumerate(means):
        ax.annotate(f"{m:.3f}", (i + 0.27, m), va="center", fontsize=8, color="C0")
    ax.set_xticks(range(len(arms)), arms)
    ax.set_ylabel("held-out accuracy (true labels)")
    lo = min(r["accuracy"] for r in rows)
    ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(r["accuracy"] for r in rows) + 0.03))
    ax.axhline(0.5, color="k", lw=0.5, ls=":")
    ax.set_title("Reward model trained on each aggregate of the same simulated votes (one line per seed)")
    ax.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    p.add_argument("--probe", action="store_true",
                   help="train each arm's head on the frozen body's last-token states (seconds per arm) instead of "
                        "a full reward run")  # fmt: skip
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
    probe = None
    if args.probe:
        name = f"features-{Path(model).name}-{args.max_length}"
        probe = (pair_features(model, train, args.max_length, args.work / f"{name}-train{len(train)}.npz"),
                 pair_features(model, test, args.max_length, args.work / f"{name}-test{len(test)}.npz"))  # fmt: skip
        settings |= {"train_pairs_kept": int(probe[0].kept.sum()), "test_pairs_kept": int(probe[1].kept.sum())}
    rows: list[dict] = []
    for seed in args.seeds:
        rows += run_seed(args, seed, train, test_file, model, probe)
        summary = summarise(rows, args.arms)  # rewritten after every seed: an interrupted run keeps what it did
        bench = {"settings": settings, "command": command, "summary": summary, "rows": rows}
        (args.out / "label_trust.json").write_text(json.dumps(bench, indent=2) + "\n")
    summary = summarise(rows, args.arms)
    text = markdown(summary, settings, command)
    (args.out / "label_trust.md").write_text(text)
    plot(rows, summary, args.out / "label_trust.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
