"""The figures of bench/correct_vs_preferred.py: per policy from `evaluate`'s kept answers, then summary over seeds,
the issue-15 bar, the Markdown tables and the plot."""

from __future__ import annotations

import math
import statistics
import sys
from typing import Any

ARM_TITLES = {
    "overall": "RLOO on rm-overall (overall preferences only)",
    "correct": "RLOO on rm-correct (heads overall,correct; correct-weighted)",
    "blended": "GRPO on rm-overall + verifier",
}
METRICS = ("accuracy_before", "accuracy_after", "accuracy_change", "win_rate", "win_rate_lc", "length_change",
           "wrong_longer", "wrong_more_confident", "wrong_longer_or_more_confident", "rl_score_before", "rl_score",
           "rl_kl")  # fmt: skip


def _share(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def arm_figures(ev: dict[str, Any], verifiers: dict[str, dict], origin: dict[str, str]) -> dict[str, Any]:
    """Figures of one policy from `evaluate`'s eval.json (summary + every held-out answer pair): verifier accuracy of
    the starting model (before) and the policy (after), win rates, length change, and of the policy's wrong answers
    the share longer than the starting model's answer to the same prompt (the judge's tokens) and the share more
    confident (confidence minus hedging markers per 100 words: annotate.audit_features, the audit's reading)."""
    from annotate.audit_features import text_features
    from annotate.schema import prompt_id_for
    from annotate.verifiers import verify

    ex = [e for e in ev["examples"] if prompt_id_for(e["prompt"]) in verifiers]
    keys = [prompt_id_for(e["prompt"]) for e in ex]
    after = [verify(verifiers[k], e["policy"]) for k, e in zip(keys, ex)]
    before = [verify(verifiers[k], e["reference"]) for k, e in zip(keys, ex)]
    feats = text_features([e["policy"] for e in ex] + [e["reference"] for e in ex])
    tone = (feats["confidence"] - feats["hedges"]).to_numpy()
    n = len(ex)
    wrong = [i for i in range(n) if not after[i]]
    longer = [ex[i]["policy_length"] > ex[i]["reference_length"] for i in wrong]
    bolder = [bool(tone[i] > tone[n + i]) for i in wrong]
    out = {
        "heldout_checkable": n,
        "accuracy_before": _share(before),
        "accuracy_after": _share(after),
        "newly_right": sum(a and not b for a, b in zip(after, before)),
        "newly_wrong": sum(b and not a for a, b in zip(after, before)),
        "win_rate": ev["win_rate"],
        "win_rate_lc": ev["win_rate_length_controlled"],
        "judge_score_change": ev["policy_score"] - ev["reference_score"],
        "length_change": ev["length_change"],
        "length_change_pct": ev.get("length_change_pct"),
        "wrong_answers": len(wrong),
        "wrong_longer": _share(longer),
        "wrong_more_confident": _share(bolder),
        "wrong_longer_or_more_confident": _share([a or b for a, b in zip(longer, bolder)]),
        "eval_wall_s": ev.get("wall_s"),
    }
    out["accuracy_change"] = (out["accuracy_after"] - out["accuracy_before"]) if n else None
    for part in ("generated", "demo"):  # the generated set's held-out prompts, and the demo pool's
        idx = [i for i, k in enumerate(keys) if origin.get(k) == part]
        out[f"accuracy_{part}_before"] = _share([before[i] for i in idx])
        out[f"accuracy_{part}_after"] = _share([after[i] for i in idx])
        out[f"heldout_{part}"] = len(idx)
    return out


# -- over seeds ---------------------------------------------------------------------------------------------------
def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def summarise(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per arm: mean and sample sd over seeds of every metric; and the issue-15 bar, on the means and per seed."""
    summary = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        done = [r for r in rows if r["arm"] == arm and "error" not in r]
        s: dict[str, Any] = {
            "arm": arm,
            "seeds": [r["seed"] for r in done],
            "errors": sum(r["arm"] == arm and "error" in r for r in rows),
        }
        for m in METRICS:
            vals = [r[m] for r in done if _finite(r.get(m))]
            if vals:
                s[m] = {"mean": statistics.fmean(vals), "sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                        "n": len(vals), "values": vals}  # fmt: skip
        summary.append(s)
    return summary, check(rows, summary)


def _mean(summary: list[dict[str, Any]], arm: str, m: str) -> float | None:
    s = next((x for x in summary if x["arm"] == arm), None)
    return s[m]["mean"] if s and m in s else None


def check(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 15: the overall-preferences policy gains reward-model score (win rate over its start > 0.5) without
    gaining verifier accuracy; the blended-reward policy gains verifier accuracy. None where an arm is missing."""

    def overall_ok(win: float | None, change: float | None) -> bool | None:
        return None if win is None or change is None else bool(win > 0.5 and change <= 0)

    def blended_ok(change: float | None) -> bool | None:
        return None if change is None else bool(change > 0)

    per_seed = {}
    for seed in dict.fromkeys(r["seed"] for r in rows):
        by = {r["arm"]: r for r in rows if r["seed"] == seed and "error" not in r}
        o, b = by.get("overall", {}), by.get("blended", {})
        per_seed[str(seed)] = {"overall": overall_ok(o.get("win_rate"), o.get("accuracy_change")),
                               "blended": blended_ok(b.get("accuracy_change"))}  # fmt: skip
    return {
        "overall": overall_ok(_mean(summary, "overall", "win_rate"), _mean(summary, "overall", "accuracy_change")),
        "blended": blended_ok(_mean(summary, "blended", "accuracy_change")),
        "per_seed": per_seed,
    }


# -- Markdown -----------------------------------------------------------------------------------------------------
def fmt(x: Any, digits: int = 3, sign: bool = False) -> str:
    if not _finite(x):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _cell(s: dict[str, Any], m: str, digits: int = 3, sign: bool = False) -> str:
    if m not in s:
        return "n/a"
    v = s[m]
    return fmt(v["mean"], digits, sign) + (f" ± {fmt(v['sd'], digits)}" if v["n"] > 1 else "")


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "**MEETS**" if ok else "does not meet"


def _intro(result: dict[str, Any]) -> list[str]:
    st, data = result["settings"], result["data"]
    v = data["votes"]
    rm_steps = "one epoch" if st["rm_steps"] == -1 else f"{st['rm_steps']} steps"
    return [
        "# Preferred is not correct: three policies on checkable prompts (bench/correct_vs_preferred.py)",
        "",
        f"    python bench/correct_vs_preferred.py {' '.join(sys.argv[1:])}",
        "",
        f"Model `{result['model']}`; {data['generated_prompts']} generated + {data['demo_prompts']} demo checkable "
        f"prompts ({data['candidates']} candidates); {v['votes']} simulated votes by {st['annotators']} annotators "
        f"deciding by style (long, confident) {st['bias']:.0%} of the time: the wrong answer won "
        f"{fmt(v['wrong_preferred'])} of {v['right_vs_wrong']} right-vs-wrong votes and "
        f"{fmt(v['wrong_preferred_when_more_appealing'])} of the {v['wrong_appealing']} where it was the more "
        f"appealing one (planted {st['bias']}). Export split by prompt (seed {st['data_seed']}, fraction "
        f"{st['test_fraction']}): {data['train_pairs']} training pairs on {data['train_prompts']} prompts "
        f"({data['train_verifier_labelled']} labelled `correct` by a verifier), {data['test_prompts']} held-out "
        f"prompts. {st['steps']} RL steps x {st['rl_batch']} completions (groups of {st['num_generations']}), lr "
        f"{st['rl_lr']}, KL {st['kl_coef']}, {st['response_length']} new tokens; reward models {rm_steps}, "
        f"rm-correct scoring `{st['objective']}`. Seeds {', '.join(map(str, st['seeds']))}; mean ± sample sd over "
        "seeds.",
        "",
        "Accuracy: the held-out answers (greedy) that pass their prompt's verifier, the starting model's (before) and "
        "the policy's (after). Win rate: rm-overall (the annotators' taste) judging the policy's answer against the "
        "starting model's, ties half; LC: length-controlled (`evaluate`). Length change in the judge's tokens. Wrong "
        "answers: of the policy's held-out answers that fail the verifier, the share longer than the starting "
        "model's answer to the same prompt, more confident (confidence minus hedging markers per 100 words), either. "
        "Training RM's score and KL (nats per response): the trainer's own held-out figures (`eval.json`, sampled at "
        "temperature 1), scored by the reward model it trained against (rm-overall for `blended`, without the "
        "verifier bonus).",
        "",
    ]


def _arm_table(summary: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| policy | verifier accuracy before -> after | change | win rate vs start | LC win rate | length change | "
        "wrong: longer | wrong: more confident | wrong: either | training RM's score before -> after | KL |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        err = f" ({s['errors']} failed)" if s["errors"] else ""
        lines.append(
            f"| `{s['arm']}`: {ARM_TITLES.get(s['arm'], s['arm'])}{err} | {_cell(s, 'accuracy_before')} -> "
            f"{_cell(s, 'accuracy_after')} | {_cell(s, 'accuracy_change', sign=True)} | {_cell(s, 'win_rate')} | "
            f"{_cell(s, 'win_rate_lc')} | {_cell(s, 'length_change', 1, True)} | {_cell(s, 'wrong_longer', 2)} | "
            f"{_cell(s, 'wrong_more_confident', 2)} | {_cell(s, 'wrong_longer_or_more_confident', 2)} | "
            f"{_cell(s, 'rl_score_before')} -> {_cell(s, 'rl_score')} | {_cell(s, 'rl_kl', 2)} |"
        )
    return lines


def _seed_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["", "Per seed:", "", "| seed | policy | accuracy before -> after | win rate | length change | "
             "wrong answers (longer / more confident) | verifier weight |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['seed']} | `{r['arm']}` | FAILED | | | | |")
            continue
        lines.append(
            f"| {r['seed']} | `{r['arm']}` | {fmt(r['accuracy_before'])} -> {fmt(r['accuracy_after'])} | "
            f"{fmt(r['win_rate'])} | {fmt(r['length_change'], 1, True)} | {r['wrong_answers']} "
            f"({fmt(r['wrong_longer'], 2)} / {fmt(r['wrong_more_confident'], 2)}) | {fmt(r['verifier_weight'])} |"
        )
    return lines


def _rm_table(reward_models: dict[str, Any]) -> list[str]:
    lines = ["", "Reward models (held-out pairs of the export: the annotators' labels; the `correct` head's on the "
             "verifier's):", "", "| seed | rm-overall accuracy | rm-correct accuracy (its objective) | rm-correct "
             "`correct` head accuracy | overall head prefers what correct rejects |",
             "|---|---|---|---|---|"]  # fmt: skip
    for seed, rm in reward_models.items():
        o, c = rm.get("rm-overall", {}), rm.get("rm-correct", {})
        lines.append(f"| {seed} | {fmt(o.get('eval_accuracy'))} | {fmt(c.get('eval_accuracy'))} | "
                     f"{fmt(c.get('eval_head_correct_accuracy'))} | "
                     f"{fmt(c.get('eval_overall_vs_correct_disagreement'))} |")  # fmt: skip
    return lines


def _bar(chk: dict[str, Any]) -> list[str]:
    per = chk["per_seed"]
    alone = lambda arm: f"{sum(p[arm] is True for p in per.values())} of {len(per)} seeds alone"  # noqa: E731
    return [
        "",
        "## The bar (issue 15)",
        "",
        "- `overall` gains reward-model score (win rate > 0.5) without gaining verifier accuracy: "
        f"{_verdict(chk['overall'])} on the means ({alone('overall')})",
        f"- `blended` gains verifier accuracy: {_verdict(chk['blended'])} on the means ({alone('blended')})",
        "",
    ]


def markdown(result: dict[str, Any]) -> str:
    """The tables of one benchmark: settings, policies (mean over seeds), per seed, reward models, the bar."""
    lines = _intro(result) + _arm_table(result["summary"]) + _seed_table(result["rows"])
    lines += _rm_table(result["reward_models"]) + _bar(result["check"])
    return "\n".join(lines)


# -- the plot -----------------------------------------------------------------------------------------------------
def plot(result: dict[str, Any], path: Any) -> None:
    """Left: verifier accuracy before and after per policy (seeds as dots). Middle: win rate over the start against
    the accuracy change, a dot per seed: the planted gap is the `overall` dots up and to the left. Right: the shares
    of wrong answers that got longer or more confident."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = result["summary"]
    arms = [s["arm"] for s in summary]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(16, 4.6))
    for i, s in enumerate(summary):
        for j, (m, label) in enumerate((("accuracy_before", "before"), ("accuracy_after", "after"))):
            if m in s:
                a1.bar(i + (j - 0.5) * 0.38, s[m]["mean"], 0.36, color=f"C{j}", label=label if i == 0 else None)
                a1.plot([i + (j - 0.5) * 0.38] * s[m]["n"], s[m]["values"], "k.", ms=4)
    a1.set_xticks(range(len(arms)), arms)
    a1.set(ylabel="held-out verifier accuracy", ylim=(0, 1), title="verifier accuracy (dots: seeds)")
    a1.legend(fontsize=8)
    for r in result["rows"]:
        if "error" not in r and _finite(r.get("accuracy_change")) and _finite(r.get("win_rate")):
            c = f"C{arms.index(r['arm']) + 2}"
            a2.scatter(r["accuracy_change"], r["win_rate"], color=c, s=30)
            a2.annotate(f"{r['arm']} s{r['seed']}", (r["accuracy_change"], r["win_rate"]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))  # fmt: skip
    a2.axhline(0.5, color="grey", lw=0.8)
    a2.axvline(0.0, color="grey", lw=0.8)
    a2.set(
        xlabel="verifier accuracy change", ylabel="rm-overall win rate over the start", title="preferred vs correct"
    )
    keys = (("wrong_longer", "longer"), ("wrong_more_confident", "more confident"))
    for i, s in enumerate(summary):
        for j, (m, label) in enumerate(keys):
            if m in s:
                a3.bar(i + (j - 0.5) * 0.38, s[m]["mean"], 0.36, color=f"C{j + 5}", label=label if i == 0 else None)
    a3.set_xticks(range(len(arms)), arms)
    a3.set(ylabel="share of the policy's wrong answers", ylim=(0, 1), title="wrong answers vs the start's answer")
    a3.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
