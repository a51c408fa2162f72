"""What the annotation screen does, as plain functions: no Gradio here, so it is testable without a browser.

`AnnotationService` ties a PairSampler to a ComparisonStore. Each browser tab (or gradio_client) has a
`SessionState`; every action returns a `View` that the UI turns into component updates. Sides in the UI are
positions ("a" = shown on the left as Response A, "b" = right); records store canonical sides plus `left`.

Trust rules kept here, so that no UI path can skip them:
- a session belongs to the annotator of its first event; any later event from someone else is refused;
- the server, not the page, knows which pair a session shows: an event must carry that pair's token, and one
  lock per session makes two simultaneous events with one token store exactly one record;
- an annotator never holds two standing votes on one pair (across tabs and, via the replica follower, across
  processes); changing a vote is a retraction plus a new vote written together, never an edit in place;
- every piece of pool, store or user text reaches the page through annotate.render.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from annotate.annotator_status import QUALIFY_PREFIX
from annotate.render import render_conversation, render_inline, render_markdown, response_card
from annotate.sampler import Pair, PairSampler
from annotate.schema import CRITERIA, FLAGS, STRENGTHS, new_comparison
from annotate.store import ComparisonStore, StoreWriteError

if TYPE_CHECKING:
    from annotate.qualify import AnnotatorGate
    from annotate.replicas import ReplicaFollower

STRENGTH_BY_NAME = {name: value for value, name in STRENGTHS.items()}
UI_CHOICES = ("a", "b", "tie", "both_bad", "skip")  # a/b: the response shown left/right
CHOICE_WORDS = {"a": "A is better", "b": "B is better", "tie": "Tie", "both_bad": "Both bad", "skip": "Skipped"}
FLAG_WORDS = {"broken": "broken", "offensive": "offensive", "duplicate": "a duplicate", "cannot_judge": "cannot judge"}
MAX_RATIONALE = 5000  # characters; a rationale is a sentence or two, not a document
# Annotator names end up in file names, logs and reports: a short, safe alphabet.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
HISTORY_DEPTH = 20
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
7. **Flag** a pair that is broken, offensive or a duplicate: it is kept out of the training data.
"""


class VoteError(ValueError):
    """An event that cannot be accepted (no pair shown, stale page, another user's session, bad value)."""


class NotSaved(VoteError):
    """The store could not write the event (a full disk, an I/O error): nothing was recorded, the pair stays."""


_NOT_SAVED = (
    "Not saved: the server could not write this to disk (it may be full). Nothing was recorded and the pair "
    "stays on screen; please try again in a moment, and tell your lead if it keeps happening."
)


def check_name(name: str) -> str:
    """An annotator name: 1-64 characters of letters, digits and . _ @ -, starting with a letter or digit."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise VoteError(
            "a name is 1-64 characters of letters, digits and . _ @ -, starting with a letter or digit"
        )  # fmt: skip
    return name


@dataclass
class SessionState:
    """Per browser tab / API client. Lives in gr.State, so it must stay small and copyable."""

    session_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    owner: str = ""  # the annotator bound at the first event; nobody else may act in this session
    pair: Pair | None = None
    token: str = ""  # changes with every serve; a vote naming another token is refused (double clicks)
    shown_at: float = 0.0  # time.monotonic() when the pair was shown
    replaces: str | None = None  # comparison_id of the earlier vote being changed (History)
    history: list[tuple[str, Pair]] = field(default_factory=list)  # (comparison_id, pair) for undo


@dataclass
class View:
    prompt: str  # safe HTML
    left: str  # safe HTML: a framed response card
    right: str
    progress: str  # safe HTML: progress line and bar
    message: str = ""  # safe HTML
    token: str = ""
    history: str = ""  # safe HTML: the annotator's recent votes, newest first, each carrying its comparison_id


class AnnotationService:
    """The annotation actions. With `replicas` (annotate.replicas.ReplicaFollower) serves go through it, so that
    several processes on one store serve on one shared state. With `gate` (annotate.qualify.AnnotatorGate, started
    on the sampler) new annotators qualify first, held or capped annotators are served nothing and say why, and
    qualification answers get feedback and cannot be undone or changed."""

    def __init__(
        self,
        store: ComparisonStore,
        sampler: PairSampler,
        *,
        max_rationale: int = MAX_RATIONALE,
        replicas: ReplicaFollower | None = None,
        gate: AnnotatorGate | None = None,
    ):
        self.store, self.sampler = store, sampler
        self.max_rationale = max_rationale
        self.replicas = replicas
        self.gate = gate
        self._shown: dict[str, str] = {}  # session_id -> token of the pair it shows: the server's truth
        # Striped locks: one per session (events of one tab run one at a time) and one per annotator (the
        # standing-vote check and the append happen together). Always session first, then annotator.
        self._session_locks = [threading.Lock() for _ in range(64)]
        self._annotator_locks = [threading.Lock() for _ in range(64)]

    def _slock(self, state: SessionState) -> threading.Lock:
        return self._session_locks[hash(state.session_id) % 64]

    def _alock(self, annotator: str) -> threading.Lock:
        return self._annotator_locks[hash(annotator) % 64]

    @staticmethod
    def _bind(state: SessionState, annotator: str) -> None:
        if not state.owner:
            state.owner = annotator
        elif state.owner != annotator:
            raise VoteError("this session belongs to another annotator; nothing was recorded")

    def _check_token(self, state: SessionState, token: str) -> Pair:
        if state.pair is None:
            raise VoteError("no pair is shown: call next_pair first")
        if not token or token != self._shown.get(state.session_id):
            raise VoteError("this event is for a pair no longer shown (page out of date); nothing was recorded")
        return state.pair

    # -- serving -------------------------------------------------------------------------------------------
    def next_pair(self, state: SessionState, annotator: str) -> View:
        with self._slock(state):
            self._bind(state, annotator)
            return self._show(state, annotator, self._next(annotator))

    def _next(self, annotator: str) -> Pair | None:
        source = self.replicas or self.sampler
        if self.gate is None:
            return source.next_pair(annotator)
        if self.gate.blocked(annotator, self.sampler.progress(annotator)["done_today"]):
            self.sampler.release(annotator)  # what they had on screen is no longer in flight
            return None
        return source.next_pair(annotator, self.gate.qualifying(annotator))

    def _why_none(self, annotator: str) -> str | None:
        """Why the gate served `annotator` nothing (failed, paused, daily cap, no gold pair left), or None."""
        if self.gate is None:
            return None
        why = self.gate.blocked(annotator, self.sampler.progress(annotator)["done_today"])
        if why is None and self.gate.qualifying(annotator):
            why = "No qualification pairs are left for you in this pool; please tell an admin."
        return why

    def _announce(self, annotator: str, pair: Pair) -> None:
        if self.replicas is not None:
            self.replicas.announce(annotator, pair)

    def _show(
        self, state: SessionState, annotator: str, pair: Pair | None, message: str = "", replaces: str | None = None
    ) -> View:
        state.pair, state.token, state.shown_at = pair, uuid.uuid4().hex[:12], time.monotonic()
        state.replaces = replaces
        self._shown[state.session_id] = state.token
        progress, history = self.progress_html(annotator), history_html(self.history_choices(annotator))
        if pair is None:
            if why := self._why_none(annotator):  # said even after a saved vote: the annotator must know
                return View("", "", "", progress, message + _note(why, "refused"), state.token, history)
            done = "Nothing left to judge for you in this pool. Thank you!"
            return View("", "", "", progress, message or f'<div class="note">{done}</div>', state.token, history)
        left, right = pair.shown
        return View(
            render_conversation(pair.prompt), response_card("Response A", left.text, "a"),
            response_card("Response B", right.text, "b"), progress, message, state.token, history,
        )  # fmt: skip

    def progress_html(self, annotator: str) -> str:
        p = self.sampler.progress(annotator)
        gold = "no gold pairs yet" if p["gold_accuracy"] is None else f"{p['gold_accuracy']:.0%} of {p['gold_n']}"
        total = p["done"] + p["left"]
        return (
            f'<div class="progress-line"><b>{render_inline(annotator)}</b> · done today: <b>{p["done_today"]}</b>'
            f" · left in the pool: <b>{p['left']}</b> pairs · gold accuracy: {gold}"
            f'<progress id="progress-bar" value="{p["done"]}" max="{max(total, 1)}"></progress></div>'
        )

    def history_choices(self, annotator: str) -> list[tuple[str, str]]:
        """The annotator's recent standing votes (all tabs and processes), newest first, as (label, id). Labels
        hold no pool text: only time, pair number and the choice."""
        out = []
        for r in self.sampler.recent(annotator, HISTORY_DEPTH):
            if r["pair"] < 0:
                continue  # a honeypot (a response against itself) is an attention check, not a vote to revisit
            if self.gate is not None and self.gate.is_qualification_vote(annotator, r["comparison_id"]):
                continue  # qualification answers are final (their feedback showed the right one)
            when = r["created_at"].strftime("%H:%M:%S")
            out.append((f"{when} · pair {r['pair']} · {_shown_choice(r['choice'], r['left'])}", r["comparison_id"]))
        return out

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
        flag: str | None = None,
    ) -> View:
        """Write one durable record for the shown pair, then serve the next one."""
        with self._slock(state):
            self._bind(state, annotator)
            pair = self._check_token(state, token)
            rec_fields = self._validate(pair, choice, strength, criteria, rationale, flag)
            with self._alock(annotator):
                standing = None if pair.index < 0 else self.sampler.standing_vote(annotator, pair.index)
                if standing is not None and standing != state.replaces and pair.kind != "repeat":
                    # Another tab or replica holds this annotator's vote on the pair: never two standing votes.
                    note = "Not saved: you already judged this pair (in another tab). Change it from History."
                    return self._show(state, annotator, self._next(annotator), _note(note, "refused"))
                # A qualification answer is stored like any vote, marked by its session (annotate.qualify).
                session = QUALIFY_PREFIX + state.session_id if pair.kind == "qualify" else state.session_id
                rec = new_comparison(
                    **_pair_fields(pair), annotator=annotator, session=session,
                    decision_ms=int((time.monotonic() - state.shown_at) * 1000), **rec_fields,
                )  # fmt: skip
                records = [rec]
                if state.replaces is not None and standing == state.replaces:
                    records.insert(0, self._retraction(pair, annotator, state, state.replaces))
                try:
                    self.store.append_many(records)  # one fsync: the change lands whole or not at all
                except StoreWriteError:
                    raise NotSaved(_NOT_SAVED) from None
                for r in records:
                    self.sampler.record(r)
            if pair.kind == "qualify" and self.gate is not None:
                message = self._feedback(annotator, rec, pair)  # not undoable: the feedback shows the answer
            else:
                state.history.append((rec["comparison_id"], pair))
                del state.history[:-50]  # undo depth
                message = _saved_message(rec, pair, changed=len(records) == 2)
                if self.gate is not None and rec["choice"] != "skip" and self.gate.too_fast(rec["decision_ms"]):
                    message += _note("That was very quick: please read both responses in full before deciding.")
            return self._show(state, annotator, self._next(annotator), message)

    def _feedback(self, annotator: str, rec: dict, pair: Pair) -> str:
        """After a qualification answer: right or not, the better response and why, and where they stand."""
        picked = {"a": rec["response_a_id"], "b": rec["response_b_id"]}.get(rec["choice"])
        lines = self.gate.feedback(pair.prompt_id, pair.a.response_id, pair.b.response_id, pair.left, picked)
        kind = "saved" if lines[0].startswith("✓") else "refused"
        body = _note(lines[0], kind) + "".join(_note(line) for line in lines[1:])
        line = self.gate.qualification_line(annotator)
        return body + (_note(line) if line else "")

    def release(self, annotator: str, by: str) -> None:
        """An admin lets a failed or paused annotator continue (annotate.qualify.AnnotatorGate.release)."""
        if self.gate is None or not self.gate.release(annotator, by):
            raise VoteError("that annotator is not held (failed, paused or still qualifying); nothing changed")

    def _validate(self, pair: Pair, choice, strength, criteria, rationale, flag) -> dict:
        if choice not in UI_CHOICES:
            # Values sent by the client are not echoed back: an error toast is one more place text is shown.
            raise VoteError(f"choice must be one of {UI_CHOICES}")
        if flag is not None and (flag not in FLAGS or choice != "skip"):
            raise VoteError(f"flag must be one of {FLAGS}")
        level = None
        if choice in ("a", "b"):  # strength only means something for a preference
            level = STRENGTH_BY_NAME.get(strength, strength) if strength not in (None, "") else 2
            if level not in STRENGTHS:
                raise VoteError(f"strength must be one of {list(STRENGTH_BY_NAME)}")
        picks = {}
        for name, pick in (criteria or {}).items():
            if pick in (None, "", "-", "—"):
                continue
            if name not in CRITERIA or pick not in ("a", "b", "tie"):
                raise VoteError(f"criteria: each of {CRITERIA} takes a pick of a, b or tie")
            picks[name] = _canonical(pick, pair.left)
        rationale = (rationale or "").strip()
        if len(rationale) > self.max_rationale:
            raise VoteError(
                f"the rationale is {len(rationale):,} characters, over the limit of {self.max_rationale:,}; "
                "nothing was recorded"
            )  # fmt: skip
        return {"choice": _canonical(choice, pair.left), "strength": level, "criteria": picks,
                "rationale": rationale, "flag": flag}  # fmt: skip

    def flag(self, state: SessionState, annotator: str, reason: str, token: str = "") -> View:
        """Report the shown pair (broken, offensive, duplicate, cannot judge): a skip that says why."""
        return self.vote(state, annotator, "skip", None, None, "", token, flag=reason)

    def _retraction(self, pair: Pair, annotator: str, state: SessionState, cid: str) -> dict:
        return new_comparison(
            **_pair_fields(pair), choice="skip", annotator=annotator, session=state.session_id, retracts=cid
        )

    def undo(self, state: SessionState, annotator: str) -> View:
        """Retract this session's last vote (a new record pointing at it) and show that pair again."""
        with self._slock(state):
            self._bind(state, annotator)
            if not state.history:
                return self._show(state, annotator, state.pair, _note("Nothing to undo in this session."))
            cid, pair = state.history.pop()
            with self._alock(annotator):
                standing = None if pair.index < 0 else self.sampler.standing_vote(annotator, pair.index)
                if standing not in (None, cid) and pair.kind != "repeat":
                    return self._show(state, annotator, state.pair, _note("That vote was already changed."))
                rec = self._retraction(pair, annotator, state, cid)
                try:
                    self.store.append(rec)
                except StoreWriteError:
                    state.history.append((cid, pair))
                    raise NotSaved(_NOT_SAVED) from None
                self.sampler.record(rec)
                self.sampler.hold(annotator, pair)
                self._announce(annotator, pair)
            return self._show(state, annotator, pair, _note("Last vote undone; judge this pair again."))

    def reopen(self, state: SessionState, annotator: str, comparison_id: str) -> View:
        """Show the pair of one of the annotator's earlier votes again; the next vote on it replaces that vote."""
        with self._slock(state):
            self._bind(state, annotator)
            if self.gate is not None and self.gate.is_qualification_vote(annotator, comparison_id):
                raise VoteError("qualification answers are final; nothing to change")
            recent = self.sampler.recent(annotator, 1000)
            rec = next((r for r in recent if r["comparison_id"] == comparison_id and r["pair"] >= 0), None)
            if rec is None:
                raise VoteError("that vote is not among your standing votes; nothing to change")
            pair = self.sampler.reopen(annotator, rec["pair"], rec["left"])
            self._announce(annotator, pair)
            was = _shown_choice(rec["choice"], rec["left"])
            note = _note(f"Changing your earlier vote ({was}): vote again to replace it.")
            return self._show(state, annotator, pair, note, replaces=comparison_id)


def history_html(entries: list[tuple[str, str]]) -> str:
    """History as a list the page selects from ([h] or a click); ids come from the store, so they are escaped."""
    if not entries:
        return '<p class="note">No votes yet.</p>'
    items = "".join(f'<li data-cid="{render_inline(cid)}">{render_inline(label)}</li>' for label, cid in entries)
    return f"<ol>{items}</ol>"


def _pair_fields(pair: Pair) -> dict:
    return {
        "prompt_id": pair.prompt_id, "prompt": pair.prompt, "left": pair.left,
        "response_a_id": pair.a.response_id, "response_a": pair.a.text, "source_a": pair.a.source,
        "response_b_id": pair.b.response_id, "response_b": pair.b.text, "source_b": pair.b.source,
    }  # fmt: skip


def _canonical(pick: str, left: str) -> str:
    """Position pick ("a" = left) to the record's canonical side."""
    if pick == "a":
        return left
    if pick == "b":
        return "b" if left == "a" else "a"
    return pick


def _shown_choice(choice: str, left: str) -> str:
    """A canonical choice in the words of the screen it was made on (A = the left response)."""
    return CHOICE_WORDS[_canonical(choice, left) if choice in ("a", "b") else choice]


def _note(text: str, kind: str = "note") -> str:
    return f'<div class="{kind}">{render_inline(text)}</div>'


def _saved_message(rec: dict, pair: Pair, changed: bool) -> str:
    what = _shown_choice(rec["choice"], rec["left"])
    if rec["strength"]:
        what += f" ({STRENGTHS[rec['strength']]})"
    if rec["flag"]:
        what = f"flagged as {FLAG_WORDS[rec['flag']]}; kept out of the training data"
    extras = f" · {len(rec['criteria'])} criteria" if rec["criteria"] else ""
    verb = "Changed" if changed else "Saved"
    when = rec["created_at"].strftime("%H:%M:%S")
    return _note(f"✓ {verb}: {what}{extras} · pair {pair.index} · {when}", "saved")


def dashboard_view(store: ComparisonStore, gold: dict | None = None, verifiers: dict | None = None) -> dict:
    """The admin Dashboard, live: the audit's plain-language findings, one row per annotator, and its figures
    (the same numbers as `python -m annotate audit`, with fewer bootstrap draws so a refresh stays quick),
    annotator reliability ("reliability": a table), preferred vs verified on the pool's checkable prompts
    ("verified": a table, "" when there is none) and the judge bias card ("judges": a table, "" without AI judges).
    Source and annotator names inside are untrusted: findings go through the Markdown path, table cells are
    escaped."""
    from annotate.audit_correct import annotator_rows
    from annotate.audit_dashboard import dashboard_figures, dashboard_summary
    from annotate.audit_judge import card_rows
    from annotate.audit_reliability import reliability_rows

    summary = dashboard_summary(store.read(), gold, n_boot=200, verifiers=verifiers)
    findings = '<div class="findings">' + render_markdown("\n".join(f"- {x}" for x in summary.findings)) + "</div>"
    rows = [row.to_dict() for row in summary.annotators]  # NaN as None: an undefined figure shows as such
    checked = summary.audit.preferred_vs_verified
    verified = ""
    if checked is not None:  # a fixed heading of ours, then cells through render_inline
        verified = "<h3>Preferred vs verified: how often the wrong answer won</h3>"
        verified += html_table(annotator_rows(checked))
    rel, card = summary.audit.reliability, summary.audit.judges
    reliability = "<h3>Annotator reliability (Dawid-Skene): share of votes matching the inferred better response</h3>"
    reliability += html_table(reliability_rows(rel)) if rel is not None else ""
    judges = "<h3>Judge bias card: AI judges next to the humans</h3>" + html_table(card_rows(card)) if card else ""
    figures = dashboard_figures(summary)
    return {"findings": findings, "annotators": html_table(rows), "figures": figures, "verified": verified,
            "reliability": reliability, "judges": judges}  # fmt: skip


def checks_html(gate: AnnotatorGate | None) -> str:
    """The admin's table of annotator checks (annotate.qualify): held annotators first, every cell escaped."""
    if gate is None:
        return ""
    rows = gate.rows()
    head = "<h3>Annotator checks: qualification, live checks, too-fast votes (held annotators first)</h3>"
    return head + (html_table(rows) if rows else '<p class="note">no annotator yet</p>')


def html_table(rows: list[dict]) -> str:
    """Rows of untrusted values as an HTML table, every cell escaped."""
    if not rows:
        return '<p class="note">no votes yet</p>'
    cols = list(rows[0])
    cell = lambda v: render_inline(f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    head = "".join(f"<th>{render_inline(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f'<table class="annotators"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
