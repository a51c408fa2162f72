"""The distillation report card: what the student costs and what it kept, teacher vs student on the same prompts.

Writes `distill_report.json` and `distill_report.png` into the student's directory. Every figure is measured here,
on this machine, on the held-out prompts the student was not trained on:

- parameters and size on disk (weight files) of both models;
- generation speed: tokens/s, batch 1, greedy, exactly `max_new_tokens` new tokens per prompt (eos ignored so both
  models produce the same number of tokens), teacher and student timed alternately prompt by prompt so background
  load hits both alike;
- agreement: top-1 next-token agreement and KL(teacher || student) per token, teacher-forced on teacher answers;
- with a reward model: its win rate of student answers over teacher answers (ties count half) and the reward score
  kept = mean sigmoid(r_student) / mean sigmoid(r_teacher). Raw rewards are unbounded and can be negative, so a
  ratio of raw means is meaningless; sigmoid(r) is the Bradley-Terry probability of beating a reward-0 answer;
- output length (tokens, natural greedy answers);
- `shortfalls`: plain sentences saying where the student falls short;
- with a vocabulary-trimmed copy of the student (rlhf/vocab_trim.py), `trimmed_vocab`: its size, speed, reward,
  how often its greedy answer equals the untrimmed student's, and the share of held-out teacher tokens it can no
  longer emit.

    python -m rlhf.distill_report --student runs/distill [--teacher DIR] [--reward-model DIR] [--trim-vocab]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

SPEED_TARGET = 1.7  # a student worth serving is at least this much faster than its teacher ...
KEPT_TARGET = 0.85  # ... and keeps at least this share of the teacher's reward score


def size_on_disk(model_dir: str | Path) -> int:
    """Bytes of weight files (safetensors / bin) in a checkpoint directory."""
    return sum(p.stat().st_size for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin"))


def _speed(
    teacher, student, tokenizer, prompts, max_new_tokens: int, batch_size: int = 1, student_tokenizer=None
) -> tuple[float, float]:
    """(teacher tokens/s, student tokens/s): greedy generation of exactly max_new_tokens tokens per prompt,
    `batch_size` prompts per call, the two models timed alternately so both see the same machine load."""
    from rlhf.distill_models import generate

    kw = dict(max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens, batch_size=batch_size)
    toks = {"teacher": tokenizer, "student": student_tokenizer or tokenizer}
    for name, m in (("teacher", teacher), ("student", student)):  # warm-up: allocation, kernel selection
        generate(m, toks[name], prompts[:batch_size], **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})
    elapsed = {"teacher": 0.0, "student": 0.0}
    tokens = {"teacher": 0, "student": 0}
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        for name, m in (("teacher", teacher), ("student", student)):
            t0 = time.perf_counter()
            out = generate(m, toks[name], chunk, **kw)
            elapsed[name] += time.perf_counter() - t0
            tokens[name] += sum(map(len, out))
    return tokens["teacher"] / elapsed["teacher"], tokens["student"] / elapsed["student"]


def _trimmed(trimmed_dir, teacher_model, tokenizer, prompts, teacher_answers, *, student_texts, reward_model,
             teacher_score, max_new_tokens, speed_prompts, speed_batch_size) -> dict[str, Any]:  # fmt: skip
    """The vocabulary-trimmed student measured like the student, plus what trimming cost."""
    from rlhf.distill_models import generate
    from rlhf.models import load_causal_lm, load_tokenizer

    info = json.loads((Path(trimmed_dir) / "vocab_trim.json").read_text())
    kept = set(info["old_ids"])
    model = load_causal_lm(str(trimmed_dir), dtype="float32").eval()
    tok = load_tokenizer(str(trimmed_dir))
    answers = tok.batch_decode(generate(model, tok, prompts, max_new_tokens=max_new_tokens, desc="trimmed answers"),
                               skip_special_tokens=True)  # fmt: skip
    sel = prompts[:speed_prompts]
    t1, s1 = _speed(teacher_model, model, tokenizer, sel, max_new_tokens, 1, student_tokenizer=tok)
    out: dict[str, Any] = {
        "path": str(trimmed_dir),
        "vocab_kept": len(kept),
        "vocab_full": info["full"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "size_on_disk_mb": size_on_disk(trimmed_dir) / 2**20,
        "speedup": s1 / t1,
        "tokens_per_s": s1,
        # Tokens the teacher emitted on held-out prompts that the trimmed student cannot emit at all.
        "heldout_teacher_tokens_dropped": sum(t not in kept for a in teacher_answers for t in a)
        / max(1, sum(map(len, teacher_answers))),
        "same_answer_as_student": sum(a == b for a, b in zip(answers, student_texts)) / len(answers),
        "mean_output_chars": sum(map(len, answers)) / len(answers),
    }
    if speed_batch_size > 1:
        tb, sb = _speed(teacher_model, model, tokenizer, sel, max_new_tokens, speed_batch_size, student_tokenizer=tok)
        out["speedup_batched"] = sb / tb
    if reward_model:
        r = _reward_scores(reward_model, prompts, answers)
        mean = sum(1 / (1 + math.exp(-x)) for x in r) / len(r)
        out["reward_mean"] = mean
        out["score_kept"] = mean / teacher_score
    return out


def _reward_scores(reward_model: str, prompts, responses: list[str]) -> list[float]:
    """Reward of each (prompt, response), loaded and scored as reward, ppo, rloo and evaluate do (rlhf.reward.score:
    the chat-templated conversation, read at its last token, batched by length)."""
    from rlhf.models import load_tokenizer
    from rlhf.reward import load_reward_model, score

    tok = load_tokenizer(reward_model)
    return score(load_reward_model(reward_model, tok), tok, prompts, responses)


def _shortfalls(r: dict[str, Any]) -> list[str]:
    """Plain sentences on where the student falls short of the teacher (never empty)."""
    out = []
    if r["speedup"] < SPEED_TARGET:
        batched = r.get("speedup_batched")
        also = f"; {batched:.2f}x at batch {r['speed_batch_size']}" if batched else ""
        who = "Untrimmed, generating" if r.get("trimmed_vocab") else "Generating"
        out.append(
            f"{who} one answer at a time it is only {r['speedup']:.2f}x the teacher's speed (target "
            f"{SPEED_TARGET}x{also})."
        )
    out.append(
        f"The student picks a different next token than the teacher at {1 - r['top1_agreement']:.0%} of answer "
        f"positions (KL {r['kl_per_token']:.3f} nats/token)."
    )
    rw = r["reward"]
    if rw["model"] is None:
        out.append("No reward model was given: answer quality relative to the teacher was not scored.")
    else:
        if rw["score_kept"] < KEPT_TARGET:
            out.append(f"It keeps {rw['score_kept']:.0%} of the teacher's reward score (target {KEPT_TARGET:.0%}).")
        if rw["student_win_rate"] < 0.5:
            out.append(
                f"The reward model prefers the teacher's answer on {1 - rw['student_win_rate']:.0%} of prompts."
            )
    ratio = r["output_length_ratio"]
    if not 0.8 <= ratio <= 1.25:
        out.append(f"Its answers are {ratio:.2f}x the teacher's length ({'longer' if ratio > 1 else 'shorter'}).")
    tv = r.get("trimmed_vocab")
    if tv:
        out.append(
            f"The vocabulary-trimmed student ({tv['speedup']:.2f}x at batch 1) can emit only {tv['vocab_kept']:,} of "
            f"{tv['vocab_full']:,} tokens: {tv['heldout_teacher_tokens_dropped']:.1%} of the teacher's held-out "
            f"tokens are out of its reach, and its greedy answer equals the untrimmed student's on "
            f"{tv['same_answer_as_student']:.0%} of prompts."
        )
    out.append(f"All figures come from {r['prompts']} held-out prompts: differences of a few points are noise.")
    return out


def _side(path: str | Path, model, answers: list[list[int]], tokens_per_s: float) -> dict[str, Any]:
    """One model's column of the report: size, depth, speed and answer length."""
    return {
        "path": str(path),
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": model.config.num_hidden_layers,
        "size_on_disk_mb": size_on_disk(path) / 2**20,
        "tokens_per_s": tokens_per_s,
        "mean_output_tokens": sum(map(len, answers)) / len(answers),
    }


def _batched_speed(teacher, student, tokenizer, prompts, max_new_tokens: int, batch_size: int) -> dict | None:
    """Tokens/s at `batch_size` (None at 1). Batch 1 is the latency a chat user sees; a server batches, and there the
    layers' share of the work grows."""
    if batch_size <= 1:
        return None
    tb, sb = _speed(teacher, student, tokenizer, prompts, max_new_tokens, batch_size)
    return {"teacher_tokens_per_s": tb, "student_tokens_per_s": sb}


def _reward_section(reward_model: str | None, prompts, texts: dict[str, list[str]]) -> dict[str, Any]:
    """The reward model's verdict on student vs teacher answers (just the scale without a reward model)."""
    reward: dict[str, Any] = {"model": reward_model, "scale": "mean sigmoid(reward); win rate: ties count half"}
    if not reward_model:
        return reward
    r_t, r_s = (_reward_scores(reward_model, prompts, texts[n]) for n in ("teacher", "student"))
    sig = lambda xs: sum(1 / (1 + math.exp(-x)) for x in xs) / len(xs)  # noqa: E731
    reward.update(
        teacher_mean_raw=sum(r_t) / len(r_t),
        student_mean_raw=sum(r_s) / len(r_s),
        teacher_mean=sig(r_t),
        student_mean=sig(r_s),
        score_kept=sig(r_s) / sig(r_t),
        student_win_rate=sum(1.0 if s > t else 0.5 if s == t else 0.0 for s, t in zip(r_s, r_t)) / len(r_s),
    )
    return reward


def _report(sides: dict, agree: dict, reward: dict, batched: dict | None, *, speed_batch_size: int, prompts: int,
            speed_prompts: int, max_new_tokens: int) -> dict[str, Any]:  # fmt: skip
    """The report's figures, in the order distill_report.json lists them."""
    import torch

    t, s = sides["teacher"], sides["student"]
    return {
        "teacher": t,
        "student": s,
        "speedup": s["tokens_per_s"] / t["tokens_per_s"],
        "speed_batch_size": speed_batch_size if batched else None,
        "speedup_batched": batched["student_tokens_per_s"] / batched["teacher_tokens_per_s"] if batched else None,
        "batched_tokens_per_s": batched,
        "parameter_ratio": s["parameters"] / t["parameters"],
        "top1_agreement": agree["top1_agreement"],
        "kl_per_token": agree["kl"],
        "reward": reward,
        "output_length_ratio": s["mean_output_tokens"] / max(t["mean_output_tokens"], 1e-9),
        "prompts": prompts,
        "speed_prompts": min(speed_prompts, prompts),
        "max_new_tokens": max_new_tokens,
        "hardware": {
            "device": "cpu",
            "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
        },
    }


def build_report(
    teacher: str,
    student: str,
    prompts: list[list[dict[str, str]]],
    teacher_answers: list[list[int]],
    *,
    out_dir: str | Path,
    reward_model: str | None = None,
    max_new_tokens: int = 64,
    speed_prompts: int = 8,
    speed_batch_size: int = 8,
    trimmed_dir: str | Path | None = None,
    teacher_model=None,
    student_model=None,
    tokenizer=None,
) -> dict[str, Any]:
    """Measure teacher vs student, write distill_report.json + .png into out_dir, return the report."""
    from rlhf.distill_models import divergence, generate
    from rlhf.models import load_causal_lm, load_tokenizer, resolve_model

    tokenizer = tokenizer or load_tokenizer(teacher)
    teacher_model = (teacher_model or load_causal_lm(teacher, dtype="float32")).eval()
    student_model = (student_model or load_causal_lm(student, dtype="float32")).eval()
    agree = divergence(student_model, teacher_model, tokenizer, prompts, teacher_answers)
    student_answers = generate(
        student_model, tokenizer, prompts, max_new_tokens=max_new_tokens, desc="student answers"
    )
    timed = prompts[:speed_prompts]
    t_tps, s_tps = _speed(teacher_model, student_model, tokenizer, timed, max_new_tokens)
    batched = _batched_speed(teacher_model, student_model, tokenizer, timed, max_new_tokens, speed_batch_size)
    sides = {"teacher": _side(resolve_model(teacher), teacher_model, teacher_answers, t_tps),
             "student": _side(student, student_model, student_answers, s_tps)}  # fmt: skip
    texts = {n: tokenizer.batch_decode(a, skip_special_tokens=True)
             for n, a in (("teacher", teacher_answers), ("student", student_answers))}  # fmt: skip
    reward = _reward_section(reward_model, prompts, texts)
    report = _report(sides, agree, reward, batched, speed_batch_size=speed_batch_size, prompts=len(prompts),
                     speed_prompts=speed_prompts, max_new_tokens=max_new_tokens)  # fmt: skip
    if trimmed_dir:
        report["trimmed_vocab"] = _trimmed(
            trimmed_dir, teacher_model, tokenizer, prompts, teacher_answers, student_texts=texts["student"],
            reward_model=reward_model, teacher_score=reward.get("teacher_mean"), max_new_tokens=max_new_tokens,
            speed_prompts=speed_prompts, speed_batch_size=speed_batch_size,
        )  # fmt: skip
    report["shortfalls"] = _shortfalls(report)
    out_dir = Path(out_dir)
    (out_dir / "distill_report.json").write_text(json.dumps(report, indent=2))
    plot_report(report, out_dir / "distill_report.png")
    print("[distill] report: " + " ".join(report["shortfalls"]))
    return report


def plot_report(report: dict[str, Any], path: str | Path) -> None:
    """Teacher vs student bars, one panel per figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("parameters (M)", lambda s: s["parameters"] / 1e6),
        ("size on disk (MB)", lambda s: s["size_on_disk_mb"]),
        ("generation tokens/s", lambda s: s["tokens_per_s"]),
        ("mean answer tokens", lambda s: s["mean_output_tokens"]),
    ]
    rw = report["reward"]
    tv = report.get("trimmed_vocab")
    fig, axes = plt.subplots(1, 5, figsize=(17, 3.4))
    for ax, (title, get) in zip(axes, panels):
        names, vals = ["teacher", "student"], [get(report["teacher"]), get(report["student"])]
        if tv and title != "mean answer tokens":  # the trimmed student counts its own (finer) tokens
            names.append("student,\ntrimmed vocab")
            vals.append(get(tv))
        ax.bar(names, vals, color=["tab:blue", "tab:orange", "tab:green"][: len(vals)])
        ax.set_title(title, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    ax = axes[-1]
    names = ["top-1 agreement"] + (["reward kept", "win rate"] if rw["model"] else [])
    vals = [report["top1_agreement"]] + ([rw["score_kept"], rw["student_win_rate"]] if rw["model"] else [])
    if tv and "score_kept" in tv:
        names.append("reward kept\n(trimmed)")
        vals.append(tv["score_kept"])
    ax.bar(names, vals, color="tab:orange")
    ax.axhline(KEPT_TARGET, ls="--", c="grey", lw=0.8)
    ax.set_ylim(0, max(1.05, max(vals) * 1.1))
    ax.set_title("student vs teacher", fontsize=9)
    ax.tick_params(axis="x", labelsize=7, labelrotation=20)
    title = f"distillation: {report['speedup']:.2f}x faster, {report['parameter_ratio']:.0%} of the parameters"
    if tv:
        title += f"; with a trimmed vocabulary ({tv['vocab_kept']:,} tokens) {tv['speedup']:.2f}x"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Re-measure a finished distillation run on its held-out teacher answers (teacher_answers.jsonl)."""
    p = argparse.ArgumentParser(prog="python -m rlhf.distill_report", description=main.__doc__)
    p.add_argument("--student", required=True, help="the distill run's output dir")
    p.add_argument("--teacher", help="teacher dir (default: the one recorded in the run's config.yaml)")
    p.add_argument("--reward-model", help="reward model dir")
    p.add_argument("--trim-vocab", action="store_true", help="also trim the student's vocabulary and measure that")
    p.add_argument("--trim-vocab-data", help="preference export whose conversations also count for --trim-vocab")
    args = p.parse_args(argv)
    import yaml

    # The run's resolved config as a plain mapping: reading it through rlhf.distill.DistillArgs would make this
    # module import the command that imports it. Keys a run did not record fall back to build_report's defaults.
    cfg = yaml.safe_load((Path(args.student) / "config.yaml").read_text()) or {}
    measure = {k: cfg[k] for k in ("max_new_tokens", "speed_prompts", "speed_batch_size") if cfg.get(k) is not None}
    teacher = args.teacher or cfg.get("teacher") or cfg.get("model")  # DistillArgs: --teacher defaults to --model
    if not teacher:
        p.error(f"{args.student}/config.yaml names no teacher: pass --teacher")
    rows = [json.loads(x) for x in (Path(args.student) / "teacher_answers.jsonl").read_text().splitlines()]
    held = [r for r in rows if r["split"] == "eval"]
    trimmed = None
    if args.trim_vocab:
        from rlhf.distill_models import trim_student

        trimmed = trim_student(args.student, [r for r in rows if r["split"] == "train"], data=args.trim_vocab_data)
    build_report(
        teacher, args.student, [r["prompt"] for r in held], [r["answer_ids"] for r in held], out_dir=args.student,
        reward_model=args.reward_model or cfg.get("reward_model"), trimmed_dir=trimmed, **measure,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
