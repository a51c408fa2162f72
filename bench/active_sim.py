"""Simulate annotators and compare `active` with `uniform` pair sampling: judgments needed for a reward model's
held-out accuracy.

Hidden truth: each word of a 300-word vocabulary has a quality weight; a response's quality is the mean weight of
its words. Annotators are noisy Bradley-Terry oracles: P(a preferred) = sigmoid(beta * (q_a - q_b)). The reward
model is a logistic Bradley-Terry model on hashed unigram+bigram features, retrained after every batch of
judgments (a transformer per round would take hours on CPU); its scores reach the very PairSampler and
ActiveStrategy the app uses, through ActiveStrategy.update_scores(). Held-out accuracy: pairs of unseen prompts,
labelled by the hidden truth without noise.

    python bench/active_sim.py --seeds 5 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import sys
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from annotate.active import ActiveStrategy  # noqa: E402
from annotate.sampler import PairSampler  # noqa: E402
from annotate.schema import new_comparison, pool_table  # noqa: E402

DIM = 2**12  # hashed feature space


def features(text: str) -> np.ndarray:
    """Hashed unigram + bigram counts, length-normalised (D,)."""
    words = text.split()
    grams = words + [f"{a}_{b}" for a, b in zip(words, words[1:])]
    x = np.zeros(DIM)
    for g in grams:
        x[zlib.crc32(g.encode()) % DIM] += 1.0
    return x / max(1, len(words))


def make_world(rng: np.random.Generator, n_prompts: int, n_cands: int, vocab: int = 300):
    theta = rng.normal(size=vocab)  # hidden quality per word
    rows, quality = [], {}
    for p in range(n_prompts):
        for r in range(n_cands):
            ids = rng.integers(0, vocab, size=rng.integers(5, 15))
            rows.append({"prompt_id": f"p{p}", "prompt": [{"role": "user", "content": f"prompt {p}"}],
                         "response_id": f"r{r}", "response": " ".join(f"w{i}" for i in ids), "source": "sim",
                         "meta": "{}"})  # fmt: skip
            quality[(f"p{p}", f"r{r}")] = float(theta[ids].mean())
    return rows, quality


def fit_bt(diffs: np.ndarray, labels: np.ndarray, l2: float = 1e-2, iters: int = 200) -> np.ndarray:
    """Logistic Bradley-Terry: P(a > b) = sigmoid(w . (x_a - x_b)); L2-regularised, fitted by L-BFGS."""
    from scipy.optimize import minimize

    if len(labels) == 0:
        return np.zeros(DIM)

    def loss(w):
        z = diffs @ w  # (N,)
        p = 1 / (1 + np.exp(-z))
        nll = np.logaddexp(0, -z) * labels + np.logaddexp(0, z) * (1 - labels)
        grad = diffs.T @ (p - labels) + l2 * len(labels) * w
        return nll.sum() + 0.5 * l2 * len(labels) * w @ w, grad

    return minimize(loss, np.zeros(DIM), jac=True, method="L-BFGS-B", options={"maxiter": iters}).x


def run(strategy_name: str, seed: int, args) -> list[tuple[int, float]]:
    rng = np.random.default_rng(seed)
    rows, quality = make_world(rng, args.prompts + args.test_prompts, args.cands)
    train_rows = [r for r in rows if int(r["prompt_id"][1:]) < args.prompts]
    test_rows = [r for r in rows if int(r["prompt_id"][1:]) >= args.prompts]
    feats = {(r["prompt_id"], r["response_id"]): features(r["response"]) for r in rows}
    test_pairs = [(a, b) for a in test_rows for b in test_rows if a["prompt_id"] == b["prompt_id"]
                  and a["response_id"] < b["response_id"]]  # fmt: skip
    t_diff = np.array([feats[(a["prompt_id"], a["response_id"])] - feats[(b["prompt_id"], b["response_id"])]
                       for a, b in test_pairs])  # fmt: skip
    t_lab = np.array([quality[(a["prompt_id"], a["response_id"])] > quality[(b["prompt_id"], b["response_id"])]
                      for a, b in test_pairs])  # fmt: skip

    pool = pool_table(train_rows)
    keys = [(r["prompt_id"], r["response_id"]) for r in train_rows]
    active = ActiveStrategy({k: 0.0 for k in keys}) if strategy_name == "active" else None
    sampler = PairSampler(pool, strategy=active or "uniform", overlap=args.overlap, seed=seed)
    diffs, labels, curve = [], [], []
    annotators = [f"ann{i}" for i in range(args.annotators)]
    while len(labels) < args.budget:
        for _ in range(args.batch):
            ann = annotators[len(labels) % len(annotators)]
            pair = sampler.next_pair(ann)
            if pair is None:
                break
            ka, kb = (pair.prompt_id, pair.a.response_id), (pair.prompt_id, pair.b.response_id)
            p_a = 1 / (1 + np.exp(-args.beta * (quality[ka] - quality[kb])))
            side = "a" if rng.random() < p_a else "b"
            sampler.record(new_comparison(
                prompt_id=pair.prompt_id, prompt=pair.prompt, response_a_id=pair.a.response_id,
                response_a=pair.a.text, response_b_id=pair.b.response_id, response_b=pair.b.text, left=pair.left,
                choice=side, annotator=ann,
            ))  # fmt: skip
            diffs.append(feats[ka] - feats[kb])
            labels.append(1.0 if side == "a" else 0.0)
        w = fit_bt(np.array(diffs), np.array(labels))
        curve.append((len(labels), float(((t_diff @ w > 0) == t_lab).mean())))
        if active is not None:  # the same call a refreshed reward model makes in the app
            active.update_scores({k: float(feats[k] @ w) for k in keys})
    return curve


def judgments_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((n for n, acc in curve if acc >= target), None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--prompts", type=int, default=300, help="pool prompts (candidates are paired within a prompt)")
    p.add_argument("--test-prompts", type=int, default=100)
    p.add_argument("--cands", type=int, default=4)
    p.add_argument("--budget", type=int, default=1200, help="judgments per run")
    p.add_argument("--batch", type=int, default=50, help="judgments between reward-model refits")
    p.add_argument("--beta", type=float, default=4.0, help="annotator sharpness (Bradley-Terry temperature)")
    p.add_argument("--annotators", type=int, default=3)
    p.add_argument("--overlap", type=int, default=1)
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    from tqdm import tqdm

    curves = {s: [run(s, seed, args) for seed in tqdm(range(args.seeds), desc=s)] for s in ("uniform", "active")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(curves)
    (out / "active_sim.json").write_text(json.dumps({"args": vars(args), "curves": curves, **summary}, indent=1))
    plot(curves, out / "active_sim.png")
    print(json.dumps(summary, indent=1))
    return 0


def summarize(curves: dict) -> dict:
    ns = [n for n, _ in curves["uniform"][0]]
    mean = {s: np.mean([[a for _, a in c] for c in cs], axis=0) for s, cs in curves.items()}
    sd = {s: np.std([[a for _, a in c] for c in cs], axis=0) for s, cs in curves.items()}
    final_uniform = float(mean["uniform"][-1])
    # Judgments each strategy needs (mean curve) to reach what uniform reaches with the whole budget, and 95% of it.
    need = {f"{s}_to_{t}": judgments_to_reach(list(zip(ns, mean[s])), t * final_uniform)
            for s in curves for t in (0.95, 1.0)}  # fmt: skip
    table = {n: {s: f"{mean[s][i]:.3f} ± {sd[s][i]:.3f}" for s in curves} for i, n in enumerate(ns) if i % 4 == 3}
    return {"final_uniform_accuracy": final_uniform, "final_active_accuracy": float(mean["active"][-1]),
            "judgments_needed": need, "accuracy_by_judgments": table}  # fmt: skip


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s, cs in curves.items():
        ns = [n for n, _ in cs[0]]
        accs = np.array([[a for _, a in c] for c in cs])
        ax.plot(ns, accs.mean(0), label=f"{s} (mean of {len(cs)} seeds)")
        ax.fill_between(ns, accs.min(0), accs.max(0), alpha=0.2)
    ax.set_xlabel("judgments")
    ax.set_ylabel("reward model held-out accuracy")
    ax.set_title("Active vs uniform pair sampling (simulated annotators)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    sys.exit(main())
