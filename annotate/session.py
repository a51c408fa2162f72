"""What the annotation screen does, as plain functions: no Gradio here, so it is testable without a browser.

`AnnotationService` ties a PairSampler to a ComparisonStore. Each browser tab (or gradio_client) has a
`SessionState`; every action returns a `View` that the UI turns into component updates. Sides in the UI are
positions ("a" = shown on the left as Response A, "b" = right); records store canonical sides plus `left`.
"""

from __future__ import annotations

import html
import re
import time
import uuid
from dataclasses import dataclass, field

import pandas as pd

from annotate.sampler import Pair, PairSampler
from annotate.schema import CRITERIA, STRENGTHS, new_comparison
from annotate.store import ComparisonStore

STRENGTH_BY_NAME = {name: value for value, name in STRENGTHS.items()}
UI_CHOICES = ("a", "b", "tie", "both_bad", "skip")  # a/b: the response shown left/right
DEFAULT_GUIDELINES = """\
### How to judge

1. **Correctness first.** A short answer that is right beats a long one that is wrong. Check facts, numbers
   and code when you can; if you cannot tell, say so in the rationale.
2. **Do not reward length for its own sake.** Extra words, lists and caveats are only better if they help.
3. **Do not reward confident tone.** Sounding sure is not evidence; "I don't know" is a good answer to a
   question that has no reliable answer.
4. **Refusals:** declining a harmful request is right; refusing a harmless one is unhelpful.
5. **Tie** when both are about equally good; **Both bad** when neither is acceptable; **Skip** when you
   cannot judge (e.g. you lack the expertise). Skipping is better than guessing.
6. Positions are random: Response A is not more likely to be the better one.
"""

# Fenced blocks (``` or ~~~) and inline code spans are left alone: Markdown already shows them as text.
_CODE = re.compile(r"(^ {0,3}(`{3,}|~{3,})[^\n]*\n.*?(?:^ {0,3}\2[ \t]*$|\Z)|`+[^`\n]*`+)", re.M | re.S)


class VoteError(ValueError):
    """A vote that cannot be accepted (no pair shown, stale page, bad value); the message says why."""


def safe_markdown(text: str) -> str:
    """Escape HTML outside code so `<script>` or `<img onerror=...>` shows as text instead of running."""
    out, pos = [], 0
    for m in _CODE.finditer(text):
        out.append(html.escape(text[pos : m.start()], quote=False))
        out.append(m.group(0))
        pos = m.end()
    out.append(html.escape(text[pos:], quote=False))
    return "".join(out)


def conversation_markdown(messages: list[dict[str, str]]) -> str:
    """A multi-turn prompt as a readable conversation (earlier assistant turns labelled as such)."""
    labels = {"user": "User", "assistant": "Assistant (earlier turn)", "system": "System", "tool": "Tool"}
    blocks = [f"**{labels.get(m['role'], m['role'])}**\n\n{safe_markdown(m['content'])}" for m in messages]
    return "\n\n---\n\n".join(blocks)


@dataclass
class SessionState:
    """Per browser tab / API client. Lives in gr.State, so it must stay small and copyable."""

    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    pair: Pair | None = None
    token: str = ""  # changes with every serve; a vote naming an old token is refused (double clicks)
    shown_at: float = 0.0  # time.monotonic() when the pair was shown
    history: list[tuple[str, Pair]] = field(default_factory=list)  # (comparison_id, pair) for undo


@dataclass
class View:
    prompt: str
    left: str
    right: str
    progress: str
    message: str = ""
    token: str = ""


class AnnotationService:
    def __init__(self, store: ComparisonStore, sampler: PairSampler):
        self.store, self.sampler = store, sampler

    # -- serving -------------------------------------------------------------------------------------------
    def next_pair(self, state: SessionState, annotator: str) -> View:
        return self._show(state, annotator, self.sampler.next_pair(annotator))

    def _show(self, state: SessionState, annotator: str, pair: Pair | None, message: str = "") -> View:
        state.pair, state.token, state.shown_at = pair, uuid.uuid4().hex[:12], time.monotonic()
        progress = self.progress_line(annotator)
        if pair is None:
            done = "Nothing left to judge for you in this pool. Thank you!"
            return View("", "", "", progress, message or done, state.token)
        left, right = pair.shown
        return View(
            conversation_markdown(pair.prompt), safe_markdown(left.text), safe_markdown(right.text), progress,
            message, state.token,
        )  # fmt: skip

    def progress_line(self, annotator: str) -> str:
        p = self.sampler.progress(annotator)
        gold = "no gold pairs yet" if p["gold_accuracy"] is None else f"{p['gold_accuracy']:.0%} of {p['gold_n']}"
        return (
            f"**{annotator}** · done today: **{p['done_today']}** · left in the pool: **{p['left']}** pairs"
            f" · gold accuracy: {gold}"
        )

    # -- voting --------------------------------------------------------------------------------------------
    def vote(
        self,
        state: SessionState,
        annotator: str,
        choice: str,
        strength: str | int | None = "clear",
        criteria: dict[str, str | None] | None = None,
        rationale: str = "",
        token: str = "",
    ) -> View:
        """Write one durable record for the shown pair, then serve the next one."""
        pair = state.pair
        if pair is None:
            raise VoteError("no pair is shown: call next_pair first")
        if token and token != state.token:
            raise VoteError("this vote is for a pair no longer shown (page out of date); nothing was recorded")
        if choice not in UI_CHOICES:
            raise VoteError(f"choice must be one of {UI_CHOICES}, got {choice!r}")
        level = None
        if choice in ("a", "b"):  # strength only means something for a preference
            level = STRENGTH_BY_NAME.get(strength, strength) if strength not in (None, "") else 2
            if level not in STRENGTHS:
                raise VoteError(f"strength must be one of {list(STRENGTH_BY_NAME)}, got {strength!r}")
        picks = {}
        for name, pick in (criteria or {}).items():
            if pick in (None, "", "-", "—"):
                continue
            if name not in CRITERIA or pick not in ("a", "b", "tie"):
                raise VoteError(f"criterion {name!r}: pick must be a, b or tie for one of {CRITERIA}")
            picks[name] = _canonical(pick, pair.left)
        rec = new_comparison(
            prompt_id=pair.prompt_id,
            prompt=pair.prompt,
            response_a_id=pair.a.response_id,
            response_a=pair.a.text,
            source_a=pair.a.source,
            response_b_id=pair.b.response_id,
            response_b=pair.b.text,
            source_b=pair.b.source,
            left=pair.left,
            choice=_canonical(choice, pair.left),
            strength=level,
            criteria=picks,
            rationale=(rationale or "").strip(),
            annotator=annotator,
            session=state.session_id,
            decision_ms=int((time.monotonic() - state.shown_at) * 1000),
        )
        self.store.append(rec)  # durable (fsync'd) before anything is acknowledged
        self.sampler.record(rec)
        state.history.append((rec["comparison_id"], pair))
        del state.history[:-50]  # undo depth
        return self.next_pair(state, annotator)

    def undo(self, state: SessionState, annotator: str) -> View:
        """Retract this session's last vote (a new record pointing at it) and show that pair again."""
        if not state.history:
            return self._show(state, annotator, state.pair, "Nothing to undo in this session.")
        cid, pair = state.history.pop()
        rec = new_comparison(
            prompt_id=pair.prompt_id, prompt=pair.prompt,
            response_a_id=pair.a.response_id, response_a=pair.a.text, source_a=pair.a.source,
            response_b_id=pair.b.response_id, response_b=pair.b.text, source_b=pair.b.source,
            left=pair.left, choice="skip", annotator=annotator, session=state.session_id, retracts=cid,
        )  # fmt: skip
        self.store.append(rec)
        self.sampler.record(rec)
        self.sampler.hold(annotator, pair)
        return self._show(state, annotator, pair, "Last vote undone; judge this pair again.")


def _canonical(pick: str, left: str) -> str:
    """Position pick ("a" = left) to the record's canonical side."""
    if pick == "a":
        return left
    if pick == "b":
        return "b" if left == "a" else "a"
    return pick


def dashboard_view(store: ComparisonStore, gold: dict | None = None) -> dict:
    """The admin Dashboard, live: the audit's plain-language findings, one row per annotator, and its figures
    (the same numbers as `python -m annotate audit`, with fewer bootstrap draws so a refresh stays quick)."""
    from annotate.audit import dashboard_figures, dashboard_summary

    summary = dashboard_summary(store.read(), gold, n_boot=200)
    findings = "\n".join(f"- {line}" for line in summary["findings"])
    annotators = pd.DataFrame(summary["annotators"]) if summary["annotators"] else pd.DataFrame({"note": ["no votes"]})
    return {"findings": findings, "annotators": annotators.round(3), "figures": dashboard_figures(summary)}
