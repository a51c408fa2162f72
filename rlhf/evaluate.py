"""`python rlhf/train.py evaluate`: does the trained policy beat its reference, by the reward model, beyond length?

Both models answer the same held-out prompts; the reward model scores every answer. Reported (eval.json):
the win rate of policy over reference (ties count half), the same win rate length-controlled two ways -- only
pairs whose lengths are within +-10% of each other, and the intercept of a logistic regression of the outcome on
the relative length difference (the win rate predicted at equal length, in the spirit of AlpacaEval's
length-controlled win rate, Dubois et al. 2024, arXiv 2404.04475) -- the mean length change, and sample pairs
side by side (also in samples.md). A plot (eval.png) shows wins against length difference.
Lengths are counted in the reward model's tokens, a yardstick common to both models. The judge's own length ruler
(from its reward run's eval.json) comes along: a win rate judged by a reward model the ruler flagged as measuring
length may be a length contest, whatever the length controls say.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlhf.config import parse_config, save_config
from rlhf.reward_heads import ObjectiveArgs, objective_record

Messages = list[dict[str, str]]


@dataclass
class EvalArgs(ObjectiveArgs):
    """Reward-model win rate of a policy over a reference on held-out prompts, length-controlled."""

    policy: str | None = field(
        default=None, metadata={"help": "trained policy (a run's output directory or a Hub id)"}
    )
    reference: str = field(default="default", metadata={"help": "reference policy, e.g. the starting model"})
    reward_model: str | None = field(default=None, metadata={"help": "reward model that judges each answer"})
    prompts: str | None = field(
        default=None, metadata={"help": "held-out prompts: an export (.parquet/.jsonl), a pool, or a .txt file"}
    )
    output_dir: str = field(default="runs/eval", metadata={"help": "where eval.json, eval.png and samples.md go"})
    num_prompts: int = field(default=200, metadata={"help": "at most this many prompts (a seeded sample)"})
    max_new_tokens: int = field(default=128, metadata={"help": "answer length limit for both models"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy (deterministic comparison)"})
    batch_size: int = field(default=16, metadata={"help": "prompts per generate call"})
    length_tolerance: float = field(
        default=0.1, metadata={"help": "length-matched pairs: |len_p - len_r| <= tol * len_r"}
    )
    num_examples: int = field(default=5, metadata={"help": "sample pairs shown side by side"})
    reference_answers: str | None = field(
        default=None,
        metadata={
            "help": "JSON file caching the reference's answers: reused when the reference, prompts and "
            "generation settings match, so evaluating several policies generates them once"
        },
    )
    seed: int = field(default=42, metadata={"help": "seed for prompt sampling and generation"})


# -- the statistics (pure) ----------------------------------------------------------------------------------------


def outcomes(policy_scores: list[float], reference_scores: list[float]) -> list[float]:
    """1 where the policy's answer scores higher, 0.5 on a tie, 0 where the reference wins."""
    return [1.0 if p > r else 0.5 if p == r else 0.0 for p, r in zip(policy_scores, reference_scores, strict=True)]


def length_matched_win_rate(
    wins: list[float], policy_len: list[int], reference_len: list[int], tolerance: float = 0.1
) -> tuple[float | None, int]:
    """Win rate over pairs whose policy length is within +-tolerance of the reference length; (rate, n pairs)."""
    kept = [w for w, p, r in zip(wins, policy_len, reference_len, strict=True) if abs(p - r) <= tolerance * r]
    return (sum(kept) / len(kept) if kept else None), len(kept)


def length_regression(
    wins: list[float], policy_len: list[int], reference_len: list[int], l2: float = 1e-6
) -> dict[str, float]:
    """Logistic regression P(win) = sigmoid(a + b x), x = (len_p - len_r) / mean(len_r), by Newton's method.

    Ties enter as y = 0.5 (cross-entropy accepts soft labels). sigmoid(a) is the win rate predicted at equal
    length: the length-controlled win rate. A tiny L2 keeps (a, b) finite when wins separate perfectly by length.
    """
    import numpy as np

    from annotate.audit_stats import newton_logistic

    y = np.asarray(wins, dtype=float)
    scale = max(1.0, float(np.mean(reference_len)))
    x = (np.asarray(policy_len, float) - np.asarray(reference_len, float)) / scale
    X = np.stack([np.ones_like(x), x], 1)  # (n, 2)
    w, _ = newton_logistic(X, y, l2=l2, iters=100, tol=1e-10)  # the audit's solver: one logistic fit in the project
    return {"intercept": float(w[0]), "slope": float(w[1]), "win_rate": float(1.0 / (1.0 + math.exp(-w[0])))}


def summarize(
    policy_scores: list[float],
    reference_scores: list[float],
    policy_len: list[int],
    reference_len: list[int],
    tolerance: float = 0.1,
) -> dict[str, Any]:
    """All the headline numbers from scores and lengths of paired answers."""
    wins = outcomes(policy_scores, reference_scores)
    n = len(wins)
    matched, n_matched = length_matched_win_rate(wins, policy_len, reference_len, tolerance)
    reg = length_regression(wins, policy_len, reference_len)
    mean_p, mean_r = sum(policy_len) / n, sum(reference_len) / n
    return {
        "pairs": n,
        "win_rate": sum(wins) / n,
        "ties": sum(w == 0.5 for w in wins),
        "win_rate_length_matched": matched,
        "length_matched_pairs": n_matched,
        "win_rate_length_controlled": reg["win_rate"],
        "length_intercept": reg["intercept"],
        "length_coef": reg["slope"],
        "policy_score": sum(policy_scores) / n,
        "reference_score": sum(reference_scores) / n,
        "policy_length": mean_p,
        "reference_length": mean_r,
        "length_change": mean_p - mean_r,
        "length_change_pct": 100.0 * (mean_p - mean_r) / mean_r if mean_r else None,
    }


# -- generation, scoring, outputs ---------------------------------------------------------------------------------


def answers(model_name: str, prompts: list[Messages], cfg: EvalArgs, device: str) -> list[str]:
    """Decoded answers of one model (chat template, batched, special tokens stripped)."""
    import torch

    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.sampling import generate, response_text

    tok = load_tokenizer(model_name)
    model = load_causal_lm(model_name, dtype="float32" if device == "cpu" else "auto", device=device)
    torch.manual_seed(cfg.seed)
    ids = generate(
        model, tok, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
        temperature=cfg.temperature, desc=f"generating ({Path(model_name).name})",
    )  # fmt: skip
    return [response_text(tok, x) for x in ids]  # decoded as PPO and RLOO decode their samples


def cached_answers(path: str | None, key: dict[str, Any], make) -> list[str]:
    """`make()`'s answers, read from `path` instead when it holds answers made under the same `key`.

    The key names everything the answers depend on (model, prompts, generation settings); any difference
    regenerates them, so a stale cache can never stand in for a different reference.
    """
    if path and Path(path).exists():
        saved = json.loads(Path(path).read_text())
        if saved.get("key") == key:
            print(f"reference answers: reused from {path}", flush=True)
            return list(saved["answers"])
    got = make()
    if path:
        tmp = Path(f"{path}.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"key": key, "answers": got}, ensure_ascii=False))
        tmp.replace(path)  # atomic: a killed run leaves the old cache or the new one, never half of one
    return got


def answer_key(model_name: str, prompts: list[Messages], cfg: EvalArgs) -> dict[str, Any]:
    """What a model's answers depend on; the prompts by digest so the cache file stays small."""
    import hashlib

    digest = hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()
    return {"model": model_name, "prompts_sha256": digest, "max_new_tokens": cfg.max_new_tokens,
            "temperature": cfg.temperature, "seed": cfg.seed, "batch_size": cfg.batch_size}  # fmt: skip


def plot(path: Path, summary: dict[str, Any], wins: list[float], length_diff: list[float]) -> None:
    """Left: outcome against relative length difference with the fitted curve. Right: the three win rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    jitter = np.random.default_rng(0).uniform(-0.03, 0.03, len(wins))
    ax1.scatter(length_diff, np.asarray(wins) + jitter, s=12, alpha=0.6)
    xs = np.linspace(min(length_diff + [-0.5]), max(length_diff + [0.5]), 100)
    a, b = summary["length_intercept"], summary["length_coef"]
    ax1.plot(xs, 1 / (1 + np.exp(-(a + b * xs))), color="C1", label="logistic fit")
    ax1.axvline(0, color="grey", lw=0.5)
    ax1.set(xlabel="(len policy - len reference) / mean len reference", ylabel="policy wins (1 win, 0.5 tie, 0 loss)")
    ax1.set(ylim=(-0.1, 1.1), title="wins vs length")
    ax1.legend()
    names = ["raw", "length-matched", "length-controlled"]
    values = [summary["win_rate"], summary["win_rate_length_matched"] or 0.0, summary["win_rate_length_controlled"]]
    ax2.bar(names, values, color=["C0", "C2", "C1"])
    ax2.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax2.set(ylim=(0, 1), ylabel="win rate of policy over reference", title=f"{summary['pairs']} prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def side_by_side(examples: list[dict[str, Any]]) -> str:
    """Markdown: one table per sample, policy and reference answers in adjacent columns."""
    cell = lambda s: str(s).replace("|", "\\|").replace("\n", "<br>")  # noqa: E731
    parts = ["# Sample pairs (policy vs reference)\n"]
    for i, ex in enumerate(examples, 1):
        parts.append(f"## {i}. {cell(ex['prompt'][-1]['content'])}\n")
        parts.append(f"| policy ({ex['policy_score']:.3f}) | reference ({ex['reference_score']:.3f}) |\n|---|---|")
        parts.append(f"| {cell(ex['policy'])} | {cell(ex['reference'])} |\n")
    return "\n".join(parts)


def judge(rm, rm_tok, prompts: list[Messages], pol: list[str], ref: list[str]) -> tuple[tuple, tuple]:
    """((policy scores, reference scores), (policy lengths, reference lengths)) of paired answers.

    Scores come from rlhf.reward.score in one length-sorted pass over both answer sets, the path reward evaluation,
    PPO and RLOO use; lengths are counted in the reward model's tokens, a yardstick common to both policies.
    """
    from rlhf.reward import score

    n = len(prompts)
    scores = score(rm, rm_tok, prompts + prompts, pol + ref)
    n_tokens = lambda texts: [len(rm_tok(t, add_special_tokens=False)["input_ids"]) for t in texts]  # noqa: E731
    return (scores[:n], scores[n:]), (n_tokens(pol), n_tokens(ref))


def heldout_prompts(path: str) -> str:
    """The file to evaluate on: an export's X-train file means its X-test sibling, the prompts the reward model and
    the policies never trained on (the same rule `--eval-data` defaults follow in training)."""
    from rlhf.data import heldout_path

    sibling = heldout_path(path, None)
    if sibling:
        print(f"[evaluate] {path} is training data: evaluating on its held-out sibling {sibling}")
        return sibling
    if "-train." in Path(path).name:
        print(f"[evaluate] warning: {path} looks like training data and has no -test sibling; the win rate is "
              "measured on prompts the models may have trained on")  # fmt: skip
    return path


def judge_ruler(reward_model: str) -> dict[str, Any]:
    """The judge's length ruler verdict (annotate.audit_ruler, recorded by its reward run), when it has one."""
    path = Path(reward_model) / "eval.json"
    ev = json.loads(path.read_text()) if path.exists() else {}
    if "ruler_flag" not in ev:
        return {}
    return {"reward_model_ruler_flag": ev["ruler_flag"], "reward_model_ruler_verdict": ev["ruler_verdict"]}


def evaluate(cfg: EvalArgs) -> dict[str, Any]:
    import torch

    from rlhf.data import load_prompts
    from rlhf.models import load_tokenizer
    from rlhf.reward import load_reward_model

    device = "cuda" if torch.cuda.is_available() else "cpu"
    prompts = load_prompts(heldout_prompts(cfg.prompts))
    if len(prompts) > cfg.num_prompts:
        prompts = random.Random(cfg.seed).sample(prompts, cfg.num_prompts)
    from rlhf.common import say_plan

    say_plan(f"{len(prompts)} held-out prompts answered by the policy and the reference (its answers reused when "
             f"cached), up to {cfg.max_new_tokens} new tokens each; {2 * len(prompts)} answers scored by the reward "
             "model")  # fmt: skip
    pol = answers(cfg.policy, prompts, cfg, device)
    ref = cached_answers(cfg.reference_answers, answer_key(cfg.reference, prompts, cfg),
                         lambda: answers(cfg.reference, prompts, cfg, device))  # fmt: skip
    rm_tok = load_tokenizer(cfg.reward_model)
    rm = load_reward_model(cfg.reward_model, rm_tok, objective=cfg.objective).to(device)
    (pol_scores, ref_scores), (pol_len, ref_len) = judge(rm, rm_tok, prompts, pol, ref)
    summary = summarize(pol_scores, ref_scores, pol_len, ref_len, cfg.length_tolerance) | judge_ruler(cfg.reward_model)
    summary |= objective_record(rm)  # the weights a multi-head judge scored with
    rows = zip(prompts, pol, ref, pol_scores, ref_scores, pol_len, ref_len, strict=True)
    keys = ("prompt", "policy", "reference", "policy_score", "reference_score", "policy_length", "reference_length")
    examples = [dict(zip(keys, r, strict=True)) for r in rows]
    return {"summary": summary, "examples": examples}


def write_outputs(out: Path, summary: dict[str, Any], examples: list[dict[str, Any]], num_examples: int) -> None:
    """eval.json (summary + side-by-side samples), a metrics line, samples.md and eval.png."""
    from rlhf.common import write_eval

    write_eval(out, summary)
    shown = examples[:num_examples]
    data = json.loads((out / "eval.json").read_text())
    (out / "eval.json").write_text(json.dumps({**data, "examples": shown}, indent=2) + "\n")
    (out / "samples.md").write_text(side_by_side(shown))
    wins = outcomes([e["policy_score"] for e in examples], [e["reference_score"] for e in examples])
    scale = max(1.0, summary["reference_length"])
    diff = [(e["policy_length"] - e["reference_length"]) / scale for e in examples]
    plot(out / "eval.png", summary, wins, diff)


def main(argv: list[str] | None = None) -> int:
    from rlhf.preflight import preflight

    cfg = parse_config(EvalArgs, argv, prog="python rlhf/train.py evaluate")
    required = {"policy": "a trained policy: a run's output directory or a Hub id",
                "reward_model": "the judge: rlhf/train.py reward's output directory",
                "prompts": "held-out prompts: an export, a pool or a .txt file"}  # fmt: skip
    preflight(cfg, required=required)  # a mistake exits 2 before any model loads
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    result = evaluate(cfg)
    write_outputs(out, result["summary"], result["examples"], cfg.num_examples)
    s = result["summary"]
    lm = s["win_rate_length_matched"]
    print(
        f"[evaluate] win rate {s['win_rate']:.3f} | length-matched {'n/a' if lm is None else f'{lm:.3f}'} "
        f"({s['length_matched_pairs']} pairs) | length-controlled {s['win_rate_length_controlled']:.3f} | "
        f"length change {s['length_change']:+.1f} tokens -> {out / 'eval.json'}"
    )
    if s.get("reward_model_ruler_flag"):
        print(f"[evaluate] WARNING: the judge's length ruler: {s['reward_model_ruler_verdict']}")
    return 0
