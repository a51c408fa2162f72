"""What the distill command and its report card both do with teacher and student models: generate answers (the
project's one loop, rlhf.sampling.generate, re-exported), measure how far the student is from the teacher (forward
KL, top-1 agreement), trim the student's vocabulary.

It sits below both so the dependency runs one way: rlhf.distill (the command, which runs the report at its end)
-> rlhf.distill_report (which `python -m rlhf.distill_report` also runs alone on a finished run) -> this module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf.sampling import Messages, generate, render_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = ["Messages", "divergence", "generate", "trim_student"]  # generate: the one loop, re-exported for the report


def divergence(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[Messages],
    answers: list[list[int]],
    batch_size: int = 8,
) -> dict[str, float]:
    """Forward KL(teacher || student) per answer token and top-1 agreement, teacher-forced on teacher answers."""
    import torch
    import torch.nn.functional as F

    kl_sum, agree, n = 0.0, 0, 0
    student.eval()
    teacher.eval()
    for i in range(0, len(prompts), batch_size):
        seqs, starts = [], []
        for p, a in zip(prompts[i : i + batch_size], answers[i : i + batch_size]):
            ids = tokenizer(render_prompt(tokenizer, p), add_special_tokens=False)["input_ids"]  # as generate renders
            seqs.append(ids + a)
            starts.append(len(ids))
        width = max(map(len, seqs))
        input_ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
        attn = torch.zeros_like(input_ids)
        mask = torch.zeros_like(input_ids, dtype=torch.bool)  # positions whose *next* token is an answer token
        for r, (s, st) in enumerate(zip(seqs, starts)):
            input_ids[r, : len(s)] = torch.tensor(s)
            attn[r, : len(s)] = 1
            mask[r, st - 1 : len(s) - 1] = True
        input_ids, attn, mask = input_ids.to(student.device), attn.to(student.device), mask.to(student.device)
        with torch.no_grad():
            ls = F.log_softmax(student(input_ids=input_ids, attention_mask=attn).logits.float(), -1)[mask]  # (N, V)
            lt = F.log_softmax(teacher(input_ids=input_ids, attention_mask=attn).logits.float(), -1)[mask]  # (N, V)
        kl_sum += (lt.exp() * (lt - ls)).sum().item()
        agree += (ls.argmax(-1) == lt.argmax(-1)).sum().item()
        n += int(mask.sum())
    return {"kl": kl_sum / max(n, 1), "top1_agreement": agree / max(n, 1), "tokens": n}


def trim_student(
    student_dir: str, rows: list[dict[str, Any]], model=None, tokenizer=None, data: str | None = None
) -> str:
    """Write STUDENT_DIR/trimmed-vocab: the student keeping only the tokens of its training prompts (as the chat
    template renders them) and teacher answers, plus those of a preference export's conversations if `data` is
    given (rlhf/vocab_trim.py). Returns the directory."""
    from rlhf.models import load_causal_lm, load_tokenizer
    from rlhf.vocab_trim import trim

    tokenizer = tokenizer or load_tokenizer(student_dir)
    model = model or load_causal_lm(student_dir, dtype="float32")
    texts = [render_prompt(tokenizer, r["prompt"]) for r in rows]
    texts += tokenizer.batch_decode([r["answer_ids"] for r in rows], skip_special_tokens=False)
    if data:
        from rlhf.data import load_preferences

        for pair in load_preferences(data):
            for side in ("chosen", "rejected"):
                texts.append(tokenizer.apply_chat_template(pair["prompt"] + pair[side], tokenize=False))
    where = Path(student_dir) / "trimmed-vocab"
    info = trim(model, tokenizer, texts, where)
    (where / "vocab_trim.json").write_text(json.dumps(info))
    if (Path(student_dir) / "config.yaml").exists():  # the run's record travels with the model (Hub cards read it)
        shutil.copy(Path(student_dir) / "config.yaml", where / "config.yaml")
    print(f"[distill] trimmed vocabulary: {info['kept']:,} of {info['full']:,} tokens kept -> {where}")
    return str(where)
