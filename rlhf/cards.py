"""The model card: the one writer of a model's README.md, for a finished run and for `push`.

A run writes its own card when it finishes (rlhf.common.write_model_card: the command, its one-line description and
the exact command line, the resolved config and the held-out results). `python rlhf/train.py push` writes the card
again, from the files the run directory recorded (config.yaml, eval.json, distill_report.json, vocab_trim.json) and
the release (repository, license, training dataset on the Hub). Both go through `model_card`; a section whose source
is missing says so. Tables and front matter are annotate.cards', shared with the dataset card.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotate.cards import front_matter, table
from rlhf.models import DEFAULT_MODEL, DEFAULT_MODEL_NAME

VERBOSITY_NOTE = (
    "Verbosity: preference-tuned models tend to answer at greater length than needed, because human and reward-model "
    "judgments favour longer answers (Singhal et al. 2023, arXiv 2310.03716); check answer length before deploying."
)
TAGS = ("prefkit", "trl")  # every model card's tags, followed by the command that trained the model


@dataclass
class Release:
    """What `push` adds to a run's card: where the model goes, under which license, trained on which Hub dataset."""

    repo_id: str
    license: str | None = None
    data_repo: str | None = None
    data_revision: str | None = None


def read_run(model_dir: str | Path) -> dict[str, Any]:
    """What a run directory records: resolved config, held-out results, distillation report, the command."""
    import yaml

    d = Path(model_dir)
    run: dict[str, Any] = {"config": {}, "eval": None, "distill": None, "command": None}
    if (d / "config.yaml").exists():
        run["config"] = yaml.safe_load((d / "config.yaml").read_text()) or {}
    # A vocabulary-trimmed student (distill --trim-vocab) lives inside its run directory: the report is the parent's.
    run["trim"] = json.loads((d / "vocab_trim.json").read_text()) if (d / "vocab_trim.json").exists() else None
    for key, name in (("eval", "eval.json"), ("distill", "distill_report.json")):
        for where in (d, d.parent) if run["trim"] else (d,):
            if (where / name).exists():
                run[key] = json.loads((where / name).read_text())
                break
    if (d / "README.md").exists():  # the card model_card wrote when the run finished: its tags name the command
        from huggingface_hub import ModelCard

        tags = ModelCard.load(d / "README.md").data.tags or []
        run["command"] = next((t for t in tags if t not in TAGS), None)
    if run["command"] is None and "teacher" in run["config"]:
        run["command"] = "distill"
    return run


def base_model_id(name: str | None, seen: int = 0) -> str | None:
    """A Hub id for the base model: 'default' -> SmolLM2; a local run dir -> its own base, followed back."""
    if not name:
        return None
    if name == DEFAULT_MODEL:
        return DEFAULT_MODEL_NAME
    p = Path(name)
    if p.exists():
        if (p / "config.yaml").exists() and seen < 8:
            import yaml

            return base_model_id((yaml.safe_load((p / "config.yaml").read_text()) or {}).get("model"), seen + 1)
        return None  # a local checkpoint with no recorded history has no Hub id
    return name if name.count("/") == 1 else None


def _trimmed_distill_section(rep: dict[str, Any], tv: dict[str, Any]) -> str:
    rows = {
        "teacher / this model parameters": f"{rep['teacher']['parameters']:,} / {tv['parameters']:,}",
        "teacher / this model layers": f"{rep['teacher']['layers']} / {rep['student']['layers']}",
        "vocabulary kept": f"{tv['vocab_kept']:,} of {tv['vocab_full']:,} tokens",
        "generation speed-up, batch 1 (same CPU, same prompts)": f"{tv['speedup']:.2f}x",
        "greedy answer identical to the untrimmed student's": tv["same_answer_as_student"],
        "teacher's held-out tokens this model cannot emit": tv["heldout_teacher_tokens_dropped"],
        "reward score kept (mean sigmoid(reward), this model / teacher)": tv.get("score_kept"),
        "top-1 next-token agreement of the untrimmed student with the teacher": rep["top1_agreement"],
    }
    where = "\n".join(f"- {s}" for s in rep.get("shortfalls", []))
    return table(rows) + f"\n\nWhere the students fall short (from the run's report card):\n\n{where}"


def _distill_section(rep: dict | None, trimmed: bool = False) -> str:
    if not rep:
        return "The run wrote no report card (no distill_report.json in the run directory: `--report false`)."
    tv = rep.get("trimmed_vocab") if trimmed else None
    if trimmed and not tv:
        return "A vocabulary-trimmed student whose run recorded no report card for the trimmed model."
    if tv:
        return _trimmed_distill_section(rep, tv)
    rw = rep.get("reward", {})
    rows = {
        "teacher / student parameters": f"{rep['teacher']['parameters']:,} / {rep['student']['parameters']:,}",
        "teacher / student layers": f"{rep['teacher']['layers']} / {rep['student']['layers']}",
        "generation speed-up (same CPU, same prompts)": f"{rep['speedup']:.2f}x",
        "top-1 next-token agreement with the teacher": rep["top1_agreement"],
        "reward score kept (mean sigmoid(reward), student / teacher)": rw.get("score_kept"),
        "reward-model win rate vs the teacher": rw.get("student_win_rate"),
        "answer length, student / teacher": rep["output_length_ratio"],
    }
    where = "\n".join(f"- {s}" for s in rep.get("shortfalls", []))
    rm = f"`{rw['model']}`" if rw.get("model") else "none given"
    return table(rows) + f"\n\nReward model: {rm}. Where the student falls short:\n\n{where}"


def _ruler_section(ev: dict[str, Any] | None) -> str:
    """The length ruler (annotate.audit_ruler) of a reward model: what length and style alone get on its held-out
    pairs, and whether the model is clearly above them. Empty for a run that recorded none."""
    if not ev or "ruler_longer_accuracy" not in ev:
        return ""
    f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    lo, hi = ev.get("ruler_model_ci95") or (None, None)
    style = f"style-only model (fitted on {ev.get('ruler_style_training_pairs')} training pairs)"
    rows = {
        "this reward model": f"{f(ev.get('eval_accuracy'))} (95% CI {f(lo)}-{f(hi)})",
        '"pick the longer" (more characters)': f(ev["ruler_longer_accuracy"]),
        '"pick the shorter"': f(ev["ruler_shorter_accuracy"]),
        style: f(ev["ruler_style_accuracy"]),
    }
    weights = ", ".join(f"{k} {v:+.2f}" for k, v in (ev.get("ruler_style_weights") or {}).items())
    verdict = ev.get("ruler_verdict")
    verdict = f"**Warning: {verdict}.**" if ev.get("ruler_flag") else f"Verdict: {verdict}." if verdict else ""
    return (
        f"\n## Length ruler\n\nAccuracy on the same {ev.get('ruler_pairs')} held-out pairs (ties count half). The "
        "style-only model is a logistic regression on the two responses' differences in length, Markdown headers, "
        f"list items, bold, hedging and confidence markers (standardised coefficients: {weights}).\n\n"
        f"{table(rows, ('judge', 'held-out accuracy'))}\n\n{verdict}\n"
    )


def _heads_section(ev: dict[str, Any] | None) -> str:
    """A multi-head reward model's heads (rlhf/reward_heads.py): each head's held-out accuracy on its own labels,
    its weight in the saved objective, and how often `overall` prefers what `correct` rejects. Empty without heads."""
    if not ev or not ev.get("heads"):
        return ""
    f = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    weights = dict(part.split("=") for part in ev["objective"].split(","))
    rows = {}
    for h in ev["heads"].split(","):
        lo, hi = ev.get(f"eval_head_{h}_ci95") or (None, None)
        acc = f"{f(ev.get(f'eval_head_{h}_accuracy'))} (95% CI {f(lo)}-{f(hi)})"
        rows[f"`{h}` (weight {weights.get(h, '0')})"] = f"{acc} on {ev.get(f'eval_head_{h}_pairs')} pairs"
    against = ev.get("eval_overall_vs_correct_disagreement")
    note = (f"\n\nThe `overall` head prefers the response the `correct` head rejects in {against:.1%} of "
            f"{ev['eval_overall_vs_correct_pairs']} held-out pairs." if against is not None else "")  # fmt: skip
    return (
        f"\n## Reward heads\n\nOne body, a head per criterion, each trained and measured on the pairs that carry its "
        f"label. The model scores `{ev['objective']}` (saved in `reward_heads.json`; `--objective` overrides it in "
        f"ppo, rloo, grpo and evaluate).\n\n{table(rows, ('head', 'held-out accuracy'))}{note}\n"
    )


def _limitations(run: dict[str, Any]) -> str:
    limits = [VERBOSITY_NOTE]
    ev = run.get("eval") or {}
    if ev.get("ruler_flag"):
        limits.append(f"The length ruler flags it: {ev['ruler_verdict']}.")
    rep = run.get("distill")
    if rep and not 0.8 <= rep["output_length_ratio"] <= 1.25:
        limits.append(f"Its answers are {rep['output_length_ratio']:.2f}x as long as its teacher's.")
    if run.get("trim"):
        limits.append(
            f"Its vocabulary was trimmed to {run['trim']['kept']:,} of {run['trim']['full']:,} tokens (those its "
            "training conversations use): it cannot emit the others, so text far from that domain reads worse."
        )
    limits.append("Trained on a small preference set; it has not been evaluated for safety or factual accuracy.")
    return "\n".join(f"- {x}" for x in limits)


def _card_data(run: dict[str, Any], release: Release | None):
    from huggingface_hub import ModelCardData

    command = run.get("command")
    return ModelCardData(
        base_model=base_model_id(run["config"].get("model")),
        library_name="transformers",
        pipeline_tag="text-classification" if command == "reward" else "text-generation",  # a reward model scores
        license=release.license if release else None,
        tags=[*TAGS, command] if command else list(TAGS),
        datasets=[release.data_repo] if release and release.data_repo else None,
    )


def _steps(ev: dict[str, Any] | None) -> str:
    """The optimizer steps the run took, as its eval.json recorded them (the trainer's count, not the plan)."""
    if not ev or ev.get("steps") is None:
        return "optimizer steps not recorded by this run"
    if ev.get("optimizer_steps") is not None:  # ppo: each iteration samples rollouts, then updates several times
        return f"{ev['steps']:,} rollout-and-update iterations, {ev['optimizer_steps']:,} optimizer steps"
    return f"{ev['steps']:,} optimizer steps"


def _held_out_rows(ev: dict[str, Any]) -> dict[str, Any]:
    """The held-out table's rows: what has no section of its own, intervals written as 'lo-hi'."""
    rows = {}
    for k, v in ev.items():
        if k.startswith(("ruler_", "eval_head_")) or k in ("steps", "optimizer_steps"):
            continue
        ci = k.endswith("_ci95") and isinstance(v, list) and len(v) == 2 and None not in v
        rows[k] = f"{v[0]:.3f}-{v[1]:.3f}" if ci else v
    return rows


def _provenance(run: dict[str, Any], card_data, release: Release | None) -> str:
    """Base model, method, training data and, for a run's own card, the exact command line."""
    cfg = run["config"]
    method = run.get("command") or "unknown (the run directory records no command)"
    base = card_data.base_model or f"`{cfg.get('model', 'not recorded')}` (a local checkpoint, not on the Hub)"
    if release and release.data_repo:
        rev = release.data_revision or "not recorded"
        data = f"[{release.data_repo}](https://huggingface.co/datasets/{release.data_repo}), revision `{rev}`"
    else:
        data = f"`{cfg.get('data') or cfg.get('prompts') or 'not recorded'}` (local; not published with this model)"
    lines = f"- **Base model:** {base}\n- **Method:** {method} (prefkit, on TRL)\n- **Training data:** {data}"
    lines += f"\n- **Training:** {_steps(run.get('eval'))}"
    if run.get("argv"):
        lines += f"\n\nTrained with:\n\n```\npython rlhf/train.py {run['argv']}\n```"
    return lines


def model_card(run: dict[str, Any], release: Release | None = None) -> str:
    """README.md for a trained model from what its run recorded (read_run's mapping; a finishing run adds `about`
    and `argv`), plus the release when it is published."""
    import yaml

    card_data = _card_data(run, release)
    title = release.repo_id if release else f"{run.get('command') or 'a'} model trained with prefkit"
    about = f"{run['about']}\n\n" if run.get("about") else ""
    config = yaml.safe_dump(run["config"], sort_keys=False).strip() if run["config"] else "not recorded"
    # The ruler's figures and the steps have their own places; the table keeps the rest.
    shown = _held_out_rows(run["eval"] or {})
    evaluation = table(shown, ("metric", "value")) if run["eval"] else "No held-out evaluation was recorded."
    distill = (
        f"\n## Distillation\n\n{_distill_section(run['distill'], trimmed=bool(run.get('trim')))}\n"
        if run.get("distill") or run.get("command") == "distill"
        else ""
    )
    return (
        front_matter(card_data)
        + f"""
# {title}

{about}{_provenance(run, card_data, release)}

## Resolved config

The run's `config.yaml`: a recipe that runs it again (`--config`).

```yaml
{config}
```

## Held-out results

{evaluation}
{_ruler_section(run["eval"])}{_heads_section(run["eval"])}{distill}
## Known limitations

{_limitations(run)}
"""
    )
