"""Dataset and model cards for the Hub: YAML metadata (huggingface_hub's CardData) plus an honest body.

Every figure in a card is read from files the project wrote (the store, its audit, a run's config.yaml, eval.json,
distill_report.json); a section whose source is missing says so instead of being left out silently.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf.models import DEFAULT_MODEL, DEFAULT_MODEL_NAME

if TYPE_CHECKING:
    from annotate.audit_types import AuditResult

VERBOSITY_NOTE = (
    "Verbosity: preference-tuned models tend to answer at greater length than needed, because human and reward-model "
    "judgments favour longer answers (Singhal et al. 2023, arXiv 2310.03716); check answer length before deploying."
)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    return "n/a" if v is None else str(v)


def _table(rows: dict[str, Any], head: tuple[str, str] = ("field", "value")) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    return "\n".join(lines + [f"| {k} | {_fmt(v)} |" for k, v in rows.items()])


def _front_matter(card_data) -> str:
    return f"---\n{card_data.to_yaml()}\n---\n"


def size_category(n: int) -> str:
    """The Hub's size_categories bucket for n rows."""
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


# ---------------------------------------------------------------- dataset card


def _audit_section(audit: AuditResult | None, why_missing: str) -> str:
    """Agreement and bias figures from annotate.audit, or a plain statement that the audit was not run."""
    if audit is None:
        return f"The audit was not run: {why_missing}."
    rows = {
        "Krippendorff's alpha (all annotators)": audit.agreement.alpha.alpha,
        "mean Cohen's kappa (annotator pairs)": audit.agreement.mean_kappa,
        "share of decisive votes for the left response": audit.position.overall.rate,
        "share of decisive votes for the longer response": audit.length.p_longer.overall.rate,
        "annotators flagged as random clickers": len(audit.flags.random_clickers),
    }
    note = "50% means no position or length preference; alpha 1 is full agreement, 0 is chance."
    return _table(rows, ("figure (annotate.audit)", "value")) + f"\n\n{note}"


def dataset_card(
    card_data,
    *,
    repo_id: str,
    counts: dict[str, Any],
    annotators: dict[str, int],
    pseudonymised: bool,
    schemas: dict[str, Any],
    audit: AuditResult | None,
    audit_missing: str,
    guidelines: str | None,
) -> str:
    """README.md for a published comparison store."""
    ann = "\n".join(f"| {name} | {n} |" for name, n in annotators.items())
    who = "pseudonyms (stable within this release)" if pseudonymised else "the ids annotators logged in with"
    schema_text = "\n\n".join(
        f"`{cfg}`:\n\n| column | type |\n|---|---|\n" + "\n".join(f"| {f.name} | `{f.type}` |" for f in schema)
        for cfg, schema in schemas.items()
    )
    guide = guidelines.strip() if guidelines else "No annotation guidelines were given when this dataset was pushed."
    return (
        _front_matter(card_data)
        + f"""
# {repo_id}

Human pairwise judgments of model responses, collected with prefkit's labeling app.

- `comparisons`: one row per standing vote (retracted votes and their retractions removed).
- `preferences`: the votes aggregated per pair into TRL's conversational preference format
  (`prompt`, `chosen`, `rejected`, `margin`, ...), ready for `DPOTrainer` / `RewardTrainer`.

```python
from datasets import load_dataset
prefs = load_dataset("{repo_id}", "preferences", split="train")
```

## Counts

{_table(counts, ("count", "value"))}

## Annotators

Annotators appear as {who}.

| annotator | votes |
|---|---|
{ann}

## Agreement and bias

{_audit_section(audit, audit_missing)}

## Schema

{schema_text}

## Annotation guidelines

{guide}
"""
    )


# ---------------------------------------------------------------- model card


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
    if (d / "README.md").exists():  # the run's own card (rlhf.common.write_model_card) tags the command
        from huggingface_hub import ModelCard

        tags = ModelCard.load(d / "README.md").data.tags or []
        run["command"] = next((t for t in tags if t not in ("prefkit", "trl")), None)
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


def _distill_section(rep: dict | None, trimmed: bool = False) -> str:
    if not rep:
        return "This model was not distilled (no distill_report.json in the run directory)."
    rw = rep.get("reward", {})
    tv = rep.get("trimmed_vocab") if trimmed else None
    if trimmed and not tv:
        return "A vocabulary-trimmed student whose run recorded no report card for the trimmed model."
    if tv:
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
        return _table(rows) + f"\n\nWhere the students fall short (from the run's report card):\n\n{where}"
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
    return _table(rows) + f"\n\nReward model: {rm}. Where the student falls short:\n\n{where}"


def model_card(
    card_data, *, repo_id: str, run: dict[str, Any], data_repo: str | None, data_revision: str | None
) -> str:
    """README.md for a trained model, from what its run directory recorded."""
    cfg = run["config"]
    method = run["command"] or "unknown (the run directory records no command)"
    base = card_data.base_model or f"`{cfg.get('model', 'not recorded')}` (a local checkpoint, not on the Hub)"
    if data_repo:
        data = (
            f"[{data_repo}](https://huggingface.co/datasets/{data_repo}), revision `{data_revision or 'not recorded'}`"
        )
    else:
        data = f"`{cfg.get('data') or cfg.get('prompts') or 'not recorded'}` (local; not published with this model)"
    evaluation = _table(run["eval"], ("metric", "value")) if run["eval"] else "No held-out evaluation was recorded."
    limits = [VERBOSITY_NOTE]
    rep = run["distill"]
    if rep and not 0.8 <= rep["output_length_ratio"] <= 1.25:
        limits.append(f"Its answers are {rep['output_length_ratio']:.2f}x as long as its teacher's.")
    if run.get("trim"):
        limits.append(
            f"Its vocabulary was trimmed to {run['trim']['kept']:,} of {run['trim']['full']:,} tokens (those its "
            "training conversations use): it cannot emit the others, so text far from that domain reads worse."
        )
    limits.append("Trained on a small preference set; it has not been evaluated for safety or factual accuracy.")
    hyper = _table({k: v for k, v in cfg.items() if not isinstance(v, dict | list)}, ("hyperparameter", "value"))
    return (
        _front_matter(card_data)
        + f"""
# {repo_id}

- **Base model:** {base}
- **Method:** {method} (prefkit, on TRL)
- **Training data:** {data}

## Hyperparameters

Read from the run's resolved `config.yaml` (included in this repository).

{hyper}

## Evaluation

{evaluation}

## Distillation

{_distill_section(rep, trimmed=bool(run.get("trim")))}

## Known limitations

{chr(10).join(f"- {x}" for x in limits)}
"""
    )
