"""A reward model's held-out report, from scores already taken (rlhf.reward.heldout_scores): accuracy, margin,
reward-length correlation, what a `--length-debias` method dropped at inference, and each head of a `--heads` model.
Pure numbers, no model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def report_from_scores(scored: dict[str, Any], length_coef: float = 0.0) -> dict[str, Any]:
    """Pairwise accuracy, mean margin and reward-vs-length correlation (Pearson, Spearman) from heldout_scores.

    `length_coef` (reward per response token) adds a fitted length term back, to report a joint fit with it.
    """
    from scipy import stats

    n = scored["pairs"]
    rewards = scored["rewards"] + length_coef * scored["lengths"]
    lengths = scored["lengths"]
    r_c, r_r = rewards[:n], rewards[n:]
    varied = rewards.std() > 0 and lengths.std() > 0  # correlation is undefined for a constant
    return {
        "eval_pairs": n,
        "eval_accuracy": float((r_c > r_r).mean() + 0.5 * (r_c == r_r).mean()),  # ties count half
        "eval_margin_mean": float((r_c - r_r).mean()),
        "eval_reward_mean": float(rewards.mean()),
        "eval_reward_std": float(rewards.std()),
        "eval_length_pearson": float(stats.pearsonr(rewards, lengths)[0]) if varied else None,
        "eval_length_spearman": float(stats.spearmanr(rewards, lengths)[0]) if varied else None,
    }


def dropped_term_report(
    method: str,
    trainer: Any,
    style: Any,
    texts: tuple[list[str], list[str]],
    scored: dict[str, Any],
    length_head: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What `method` dropped at inference, on the held-out pairs: how it follows length, and the accuracy of the
    model with it added back (the fit as trained).

    trainer: the finished trainer (joint's length weight, poe's bias model); style: the ruler's StyleModel fitted on
    the training pairs (poe's feature scale); texts: the held-out (chosen, rejected) responses; scored: the kept
    model's heldout_scores; length_head: odin's dropped length head's heldout_scores."""
    import numpy as np

    from annotate.audit_ruler import StyleModel, pair_accuracy

    n = scored["pairs"]
    if method == "joint":
        coef = float(trainer.length_w.detach()) / trainer.length_scale  # reward per token of length
        full = report_from_scores(scored, length_coef=coef)
        return {"length_weight_per_token": coef, "eval_accuracy_with_length_term": full["eval_accuracy"],
                "eval_length_spearman_with_length_term": full["eval_length_spearman"]}  # fmt: skip
    if method == "odin" and length_head is not None:
        head = report_from_scores(length_head)
        both = report_from_scores({**scored, "rewards": scored["rewards"] + length_head["rewards"]})
        return {"eval_length_head_spearman": head["eval_length_spearman"],
                "eval_length_head_pearson": head["eval_length_pearson"],
                "eval_accuracy_with_length_head": both["eval_accuracy"]}  # fmt: skip
    if method == "poe":
        v = trainer.bias_v.detach().cpu().numpy().astype(float)
        bias = StyleModel(weights=v, scale=style.scale, pairs=style.pairs).margins(*texts)  # b(y_c) - b(y_r)
        r = scored["rewards"]
        return {"poe_bias_weights": dict(zip(style.coefficients(), v.tolist())),
                "eval_bias_model_accuracy": pair_accuracy(bias),
                "eval_accuracy_with_bias_model": pair_accuracy(r[:n] - r[n:] + np.asarray(bias))}  # fmt: skip
    return {}


def heads_report(head_rewards: Any, test: Any, heads: Sequence[str], objective: Mapping[str, float]) -> dict[str, Any]:
    """Each head's held-out accuracy on the pairs carrying its own label (ties count half; 95% Wilson interval), and
    how often the `overall` head prefers the response the `correct` head rejects, over every held-out pair (both
    heads score them all). head_rewards: heldout_scores' (2N, K), chosen rows then rejected; test: the N pairs."""
    import numpy as np

    from annotate.audit_stats import wilson
    from rlhf.reward_heads import format_objective, label_matrix

    labels = label_matrix(test, heads)  # (N, K)
    n = len(labels)
    diff = head_rewards[:n] - head_rewards[n:]  # (N, K): chosen minus rejected, per head
    out: dict[str, Any] = {"heads": ",".join(heads), "objective": format_objective(objective)}
    for k, h in enumerate(heads):
        right = labels[:, k][labels[:, k] != 0] * diff[:, k][labels[:, k] != 0]  # > 0: the head agrees
        acc = float((right > 0).mean() + 0.5 * (right == 0).mean()) if len(right) else None
        ci = wilson(round(acc * len(right)), len(right)) if acc is not None else None
        out |= {f"eval_head_{h}_pairs": len(right), f"eval_head_{h}_accuracy": acc,
                f"eval_head_{h}_ci95": list(ci) if ci else None}  # fmt: skip
    if "overall" in heads and "correct" in heads and n:
        against = np.sign(diff[:, heads.index("overall")]) * np.sign(diff[:, heads.index("correct")]) < 0
        out |= {"eval_overall_vs_correct_pairs": n, "eval_overall_vs_correct_disagreement": float(against.mean())}
    return out


def summary_lines(results: dict[str, Any]) -> str:
    """What the reward run prints last: accuracy and length correlation, the dropped term, the ruler's verdict."""
    lines = [f"[reward] held-out accuracy {results['eval_accuracy']:.3f} on {results['eval_pairs']} pairs; "
             f"reward~length Spearman {results['eval_length_spearman']}"]  # fmt: skip
    if "length_weight_per_token" in results:
        lines.append(f"[reward] length term (dropped at inference): {results['length_weight_per_token']:.4g} per "
                     f"token; with it, held-out reward~length Spearman "
                     f"{results['eval_length_spearman_with_length_term']}")  # fmt: skip
    if "eval_length_head_spearman" in results:
        lines.append(f"[reward] length head (dropped at inference): held-out reward~length Spearman "
                     f"{results['eval_length_head_spearman']}")  # fmt: skip
    if "poe_bias_weights" in results:
        lines.append(f"[reward] bias-only model (dropped at inference): held-out accuracy "
                     f"{results['eval_bias_model_accuracy']:.3f}")  # fmt: skip
    if "heads" in results:
        acc = {h: results[f"eval_head_{h}_accuracy"] for h in results["heads"].split(",")}
        each = ", ".join(f"{h} {'n/a' if a is None else f'{a:.3f}'} ({results[f'eval_head_{h}_pairs']} pairs)"
                         for h, a in acc.items())  # fmt: skip
        lines.append(f"[reward] heads, held-out accuracy on their own labels: {each}; scores {results['objective']}")
    if "eval_overall_vs_correct_disagreement" in results:
        lines.append(f"[reward] the overall head prefers the response the correct head rejects in "
                     f"{results['eval_overall_vs_correct_disagreement']:.1%} of "
                     f"{results['eval_overall_vs_correct_pairs']} held-out pairs")  # fmt: skip
    if "ruler_verdict" in results:
        warn = "WARNING: " if results["ruler_flag"] else ""
        lines.append(f"[reward] length ruler: {warn}{results['ruler_verdict']}")
    return "\n".join(lines)
