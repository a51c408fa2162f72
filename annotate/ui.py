"""The annotation screen in Gradio. It translates events and nothing more: logic lives in annotate.session.

`build_app(config, store, sampler)` returns a gr.Blocks, made in three parts: the layout (a Screen of named
components), the handlers (Handlers: one method per event, each one plain call) and the wiring (_wire). Per-tab
state is a SessionState in gr.State; every handler returns a {component: gr.update(...)} dict. The events
`next_pair`, `vote`, `flag`, `undo` and `reopen` carry api_names, so gradio_client annotates through the same code
path (and the same login) as the browser. Everything shown that came from a pool, a store or a user is HTML made by
annotate.render (gr.HTML, never gr.Markdown, whose client-side renderer is a second, different path).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# At module level on purpose: Gradio passes gr.Request only to handlers whose annotation it can resolve.
import gradio as gr

from annotate.qualify import AnnotatorGate
from annotate.render import RENDER_CSS, render_inline, render_markdown
from annotate.replicas import ReplicaFollower
from annotate.sampler import PairSampler
from annotate.schema import CRITERIA, FLAGS
from annotate.session import (
    DEFAULT_GUIDELINES,
    MAX_RATIONALE,
    AnnotationService,
    SessionState,
    View,
    VoteError,
    check_name,
    checks_html,
    dashboard_view,
)
from annotate.store import ComparisonStore
from annotate.users import Authenticator

assert CRITERIA == ("correct", "helpful", "harmless", "concise"), "on_vote names each criterion"

BUTTONS = (("a", "A is better", "1"), ("b", "B is better", "2"), ("tie", "Tie", "3"),
           ("both_bad", "Both bad", "4"), ("skip", "Skip", "5"))  # fmt: skip
FLAG_BUTTONS = (("broken", "Broken", "b"), ("offensive", "Offensive", "o"), ("duplicate", "Duplicate", "d"),
                ("cannot_judge", "Cannot judge", "n"))  # fmt: skip
assert tuple(f for f, _, _ in FLAG_BUTTONS) == FLAGS
STRENGTH_KEYS = (("slight", "q"), ("clear", "w"), ("much", "e"))
CRITERION_KEYS = dict(zip(CRITERIA, "zxcv"))
# Keyboard: a key for every control. Listened to in the capture phase, so no element of the page can swallow it;
# ignored only while typing in a text field (Escape leaves it). Radios are clicked, not focused, so a click on
# one never stops the number keys.
SHORTCUTS_JS = """
() => {
  const buttons = {"1": "vote-a", "2": "vote-b", "3": "vote-tie", "4": "vote-both_bad", "5": "vote-skip",
                   "u": "undo", "b": "flag-broken", "o": "flag-offensive", "d": "flag-duplicate",
                   "n": "flag-cannot_judge", "r": "history-open"};
  const strength = {"q": "slight", "w": "clear", "e": "much"};
  const cycles = {"z": "crit-correct", "x": "crit-helpful", "c": "crit-harmless", "v": "crit-concise"};
  // History is a plain list (cheap to send with every vote); h moves the selection, a click selects too.
  const select = (li) => {
    document.querySelectorAll("#history li.selected").forEach((x) => x.classList.remove("selected"));
    if (li) { li.classList.add("selected"); li.scrollIntoView({block: "nearest"}); }
    return Boolean(li);
  };
  document.addEventListener("click", (e) => {
    const li = e.target.closest && e.target.closest("#history li[data-cid]");
    if (li) select(li);
  });
  const typing = (t) => t && (t.isContentEditable || t.tagName === "TEXTAREA" || t.tagName === "SELECT" ||
    (t.tagName === "INPUT" && !/^(radio|checkbox|button|submit|range)$/i.test(t.type)));
  const radios = (id) => Array.from(document.querySelectorAll("#" + id + " input[type=radio]"));
  const press = (el) => { if (el) { el.click(); if (el.blur) el.blur(); return true; } return false; };
  window.addEventListener("keydown", (e) => {
    if (e.key === "Escape") { if (document.activeElement) document.activeElement.blur(); return; }
    if (e.ctrlKey || e.metaKey || e.altKey || typing(e.target)) return;
    let done = false;
    if (buttons[e.key]) {
      const id = buttons[e.key];
      done = press(document.querySelector("#" + id + " button") || document.getElementById(id));
    } else if (strength[e.key]) {
      done = press(radios("strength").find((r) => r.value === strength[e.key]));
    } else if (e.key === "h") {
      const items = Array.from(document.querySelectorAll("#history li[data-cid]"));
      const at = items.findIndex((li) => li.classList.contains("selected"));
      done = items.length > 0 && select(items[(at + 1) % items.length]);
    } else if (cycles[e.key]) {
      const rs = radios(cycles[e.key]);
      if (rs.length) done = press(rs[(rs.findIndex((r) => r.checked) + 1) % rs.length]);
    }
    if (done) { e.preventDefault(); e.stopPropagation(); }
  }, true);
}
"""
# In demo mode each browser keeps its own anonymous annotator id (localStorage), unless the annotator types a name.
ANON_JS = """
(name, st) => {
  let id = localStorage.getItem("prefkit-annotator");
  if (!id) { id = "anon-" + Math.random().toString(16).slice(2, 10); localStorage.setItem("prefkit-annotator", id); }
  return [name || id, st];
}
"""
PICK_JS = "(pick, name, st) => [document.querySelector('#history li.selected')?.dataset.cid || pick, name, st]"
REMEMBER_NAME_JS = "(name, st) => { if (name) localStorage.setItem('prefkit-annotator', name); return [name, st]; }"
CSS = (
    RENDER_CSS
    + """
#vote-row button { min-height: 48px; }
#progress-bar { width: 100%; height: 8px; margin-top: 4px; }
#history ol { margin: 0; padding-left: 1.5em; max-height: 12em; overflow-y: auto; }
#history li { cursor: pointer; padding: 2px 6px; border-radius: 4px; }
#history li.selected { background: var(--color-accent-soft); outline: 1px solid var(--color-accent); }
#message .saved { color: var(--color-accent); font-weight: 600; }
#message .refused { color: #b91c1c; font-weight: 600; }
.prompt { background: var(--background-fill-secondary); border-radius: 8px; padding: 12px 16px; }
"""
)
# After a vote, the optional fields go back to their defaults so nothing carries over to the next pair.
RESET_JS = "() => ['clear', '', " + ", ".join(["'-'"] * 4) + "]"
PICKS = [("A", "a"), ("B", "b"), ("Same", "tie"), ("no pick", "-")]
KEY_HINT = (
    "Keys: <b>1</b> A better · <b>2</b> B better · <b>3</b> tie · <b>4</b> both bad · <b>5</b> skip · "
    "<b>q/w/e</b> slight/clear/much · <b>z x c v</b> cycle correct/helpful/harmless/concise · "
    "<b>b o d n</b> flag broken/offensive/duplicate/cannot judge · <b>u</b> undo · "
    "<b>h</b> next history entry, <b>r</b> change it · <b>Esc</b> leave a text box"
)


@dataclass
class AppConfig:
    title: str = "Which response is better?"
    guidelines: str = DEFAULT_GUIDELINES
    auth: Authenticator | None = None  # None: demo mode (no login; each browser is its own anonymous annotator)
    admin_without_login: bool = False  # demo mode shows the Export and Dashboard tabs only when asked
    max_rationale: int = MAX_RATIONALE
    # (admin user, table) -> URL of a private, short-lived download (annotate.web.ExportRegistry.publish)
    publish_export: Callable | None = None
    replicas: ReplicaFollower | None = None  # several app processes on one store (annotate.replicas)
    gate: AnnotatorGate | None = None  # qualification and live checks (annotate.qualify), started on the sampler


def make_service(config: AppConfig, store: ComparisonStore, sampler: PairSampler) -> AnnotationService:
    return AnnotationService(store, sampler, max_rationale=config.max_rationale, replicas=config.replicas,
                             gate=config.gate)  # fmt: skip


class Screen:
    """The screen's components by name: what the layout builds, the handlers update and the events bind."""


def _header(sc: Screen, config: AppConfig) -> None:
    gr.HTML(f"<h2>{render_inline(config.title)}</h2>")
    with gr.Row(equal_height=True):
        sc.progress = gr.HTML(elem_id="progress")
        sc.name = gr.Textbox(
            value="", label="Your name (optional)", scale=0, min_width=180, visible=config.auth is None,
            elem_id="annotator", max_length=64,
        )  # fmt: skip
        if config.auth is not None:
            gr.HTML('<a href="/logout" id="logout">Log out</a>', elem_id="logout-box")
    sc.message = gr.HTML(elem_id="message")


def _pair_and_votes(sc: Screen, config: AppConfig) -> None:
    """The pair, the vote buttons and the optional details (strength, per-criterion picks, rationale)."""
    with gr.Accordion("Guidelines", open=False, elem_id="guidelines-panel"):
        gr.HTML(render_markdown(config.guidelines))
    sc.prompt = gr.HTML(elem_classes="prompt", elem_id="prompt")
    with gr.Row(equal_height=False):
        sc.left = gr.HTML(elem_id="response-a")
        sc.right = gr.HTML(elem_id="response-b")
    sc.strength = gr.Radio(
        [s for s, _ in STRENGTH_KEYS], value="clear", elem_id="strength",
        label="How much better?  [q] slight · [w] clear · [e] much (set before voting A or B)",
    )  # fmt: skip
    with gr.Row(elem_id="vote-row"):
        sc.buttons = {c: gr.Button(f"{label}  [{key}]", elem_id=f"vote-{c}", variant="secondary")
                      for c, label, key in BUTTONS}  # fmt: skip
    with gr.Accordion("Details (optional): per-criterion picks and rationale", open=True):
        with gr.Row():
            sc.crit = [gr.Radio(PICKS, value="-", label=f"More {c}  [{CRITERION_KEYS[c]}]", elem_id=f"crit-{c}")
                       for c in CRITERIA]  # fmt: skip
        sc.rationale = gr.Textbox(
            value="", label=f"Rationale (up to {config.max_rationale:,} characters)", lines=2,
            placeholder="Why? (optional; Esc to leave the box)", max_length=config.max_rationale, elem_id="rationale",
        )  # fmt: skip


def _flags_history_and_hidden(sc: Screen) -> None:
    """Flags, undo, the history of recent votes, and the hidden fields API callers fill."""
    with gr.Row():
        sc.flags = {f: gr.Button(f"Flag: {label}  [{key}]", elem_id=f"flag-{f}", size="sm")
                    for f, label, key in FLAG_BUTTONS}  # fmt: skip
        sc.undo = gr.Button("Undo last  [u]", elem_id="undo", size="sm")
    with gr.Accordion("History: your recent votes (change one: [h] select, [r] change)", open=True):
        sc.history = gr.HTML(elem_id="history")
        sc.history_pick = gr.Textbox(visible=False)  # the selected entry's id (API callers send it)
        sc.reopen = gr.Button("Change the selected vote  [r]", elem_id="history-open", size="sm")
    gr.HTML(KEY_HINT, elem_id="key-hint")
    sc.token = gr.Textbox(value="", visible=False)  # guards against votes from a stale page
    sc.choice = gr.Textbox(visible=False)  # API callers send the choice here
    sc.flag_reason = gr.Textbox(visible=False)  # ... and the flag reason here


def _admin_tabs(sc: Screen, config: AppConfig) -> None:
    """Export and Dashboard, hidden until on_admin_load shows them to an admin."""
    with gr.Tab("Export", visible=False) as sc.export_tab:
        gr.HTML("<p>A raw snapshot of every record (retractions included), as a private link that works "
                "once, for you, for 10 minutes. For training data use <code>python -m annotate export "
                "--store DIR --out prefs.parquet</code>.</p>")  # fmt: skip
        sc.export_btn = gr.Button("Write snapshot")
        sc.export_link = gr.HTML(elem_id="export-link")
    with gr.Tab("Dashboard", visible=False) as sc.dash_tab:
        sc.refresh = gr.Button("Refresh")
        # Annotator checks (--qualify, --live-checks, ...): who is held, and a way to let them continue.
        checking = config.gate is not None
        sc.checks = gr.HTML(elem_id="annotator-checks", visible=checking)
        with gr.Row(visible=checking):
            sc.release_name = gr.Textbox(label="Annotator to let continue (failed or paused)", elem_id="release-name",
                                         max_length=64)  # fmt: skip
            sc.release_btn = gr.Button("Let them continue", elem_id="release", size="sm")
        sc.findings = gr.HTML(elem_id="findings")
        sc.by_annotator = gr.HTML(elem_id="annotators")
        with gr.Row():
            sc.plots = {k: gr.Plot(label=k.capitalize()) for k in ("position", "length")}
        with gr.Row():
            sc.plots.update({k: gr.Plot(label=k.capitalize()) for k in ("annotators", "ranking")})
        sc.reliability = gr.HTML(elem_id="reliability")
        sc.plots["reliability"] = gr.Plot(label="Reliability")
        # The judge bias card: shown only when some annotator is an AI judge ("judge:<model>").
        sc.judges = gr.HTML(elem_id="judge-card", visible=False)
        sc.judges_plot = gr.Plot(label="Judge bias card", visible=False)
        # Preferred vs verified: shown only when the pool has checkable prompts with votes on them.
        sc.verified = gr.HTML(elem_id="preferred-vs-verified", visible=False)
        sc.verified_plot = gr.Plot(label="Preferred vs verified", visible=False)


def _layout(config: AppConfig) -> Screen:
    sc = Screen()
    sc.state = gr.State(None)  # a SessionState, made on the first event of each tab
    _header(sc, config)
    with gr.Tabs():
        with gr.Tab("Annotate"):
            _pair_and_votes(sc, config)
            _flags_history_and_hidden(sc)
        with gr.Tab("Guidelines"):
            gr.HTML(render_markdown(config.guidelines))
        _admin_tabs(sc, config)
    return sc


class Handlers:
    """One method per event: each turns the event into one plain call (AnnotationService, dashboard_view, the export
    publisher) and its result into component updates, and nothing more."""

    def __init__(self, config: AppConfig, store: ComparisonStore, sampler: PairSampler, service: AnnotationService,
                 sc: Screen) -> None:  # fmt: skip
        self.config, self.store, self.sampler, self.service, self.sc = config, store, sampler, service, sc

    def who(self, name: str | None, st: SessionState, request: gr.Request | None) -> str:
        """With login, the name is the logged-in user's and nothing the client sends can change it."""
        if self.config.auth is not None:
            user = getattr(request, "username", None)
            if not user:
                raise gr.Error("not logged in")
            return user
        name = (name or "").strip()
        if not name:
            return st.owner or f"anon-{st.session_id[:8]}"
        try:
            return check_name(name)
        except VoteError as e:
            raise gr.Error(f"Your name: {e}") from None

    def is_admin(self, request: gr.Request | None) -> bool:
        if self.config.auth is None:
            return self.config.admin_without_login
        return self.config.auth.is_admin(getattr(request, "username", None))

    def render(self, view: View, st: SessionState) -> dict:
        # Every output must be set: Gradio turns an omitted one into an empty update that rebuilds the component per
        # session, the main server cost under load. Resets of the optional fields happen in the browser instead
        # (RESET_JS), so a vote sends only what changes with the pair.
        sc = self.sc
        return {sc.prompt: view.prompt, sc.left: view.left, sc.right: view.right, sc.progress: view.progress,
                sc.message: view.message, sc.token: view.token, sc.history: view.history, sc.state: st}  # fmt: skip

    def act(self, fn: Callable, st: SessionState | None, *args) -> dict:
        """Run one service action; refusals become a visible error and store nothing."""
        st = st or SessionState()
        try:
            return self.render(fn(st, *args), st)
        except VoteError as e:
            raise gr.Error(str(e)) from None

    def on_next(self, name: str, st: SessionState | None, request: gr.Request) -> dict:
        st = st or SessionState()
        return self.act(self.service.next_pair, st, self.who(name, st, request))

    def on_rename(self, name: str, st: SessionState | None, request: gr.Request) -> dict:
        st = SessionState()  # a new name is a new session: a session never changes hands
        return self.act(self.service.next_pair, st, self.who(name, st, request))

    def on_vote(
        self, choice: str, strength: str | None, correct: str | None, helpful: str | None, harmless: str | None,
        concise: str | None, rationale: str, token: str, name: str, st: SessionState | None, request: gr.Request,
    ) -> dict:  # fmt: skip
        st = st or SessionState()
        picks = dict(zip(CRITERIA, (correct, helpful, harmless, concise)))
        # store.append has returned when this does: the vote is durable
        return self.act(self.service.vote, st, self.who(name, st, request), choice, strength, picks, rationale, token)

    def on_flag(self, reason: str, token: str, name: str, st: SessionState | None, request: gr.Request) -> dict:
        st = st or SessionState()
        return self.act(self.service.flag, st, self.who(name, st, request), reason, token)

    def on_undo(self, name: str, st: SessionState | None, request: gr.Request) -> dict:
        st = st or SessionState()
        return self.act(self.service.undo, st, self.who(name, st, request))

    def on_reopen(self, comparison_id: str | None, name: str, st: SessionState | None, request: gr.Request) -> dict:
        st = st or SessionState()
        if not comparison_id:
            raise gr.Error("select a vote in History first ([h])")
        return self.act(self.service.reopen, st, self.who(name, st, request), comparison_id)

    def on_admin_load(self, request: gr.Request) -> dict:
        admin = self.is_admin(request)
        return {self.sc.export_tab: gr.update(visible=admin), self.sc.dash_tab: gr.update(visible=admin)}

    def on_export(self, request: gr.Request) -> dict:
        if not self.is_admin(request):
            raise gr.Error("only admins can export")
        if self.config.publish_export is None:
            raise gr.Error("exports are not available in this server")
        url = self.config.publish_export(getattr(request, "username", None) or "", self.store.read())
        return {self.sc.export_link: f'<a href="{render_inline(url)}" download id="export-download">Download the '
                                     "snapshot (Parquet; works once, for 10 minutes)</a>"}  # fmt: skip

    def on_release(self, name: str, request: gr.Request) -> dict:
        if not self.is_admin(request):
            raise gr.Error("only admins can release an annotator")
        try:
            self.service.release((name or "").strip(), getattr(request, "username", None) or "admin")
        except VoteError as e:
            raise gr.Error(str(e)) from None
        return {self.sc.checks: checks_html(self.config.gate), self.sc.release_name: ""}

    def on_dashboard(self, request: gr.Request) -> dict:
        if not self.is_admin(request):
            raise gr.Error("only admins can see the dashboard")
        view = dashboard_view(self.store, self.sampler.gold, self.sampler.verifiers)
        upd = {self.sc.findings: view["findings"], self.sc.by_annotator: view["annotators"]}
        upd[self.sc.checks] = checks_html(self.config.gate)
        upd.update({self.sc.plots[k]: fig for k, fig in view["figures"].items() if k in self.sc.plots})
        checked = view["figures"].get("verified")
        upd[self.sc.verified] = gr.update(value=view["verified"], visible=bool(view["verified"]))
        upd[self.sc.verified_plot] = gr.update(value=checked, visible=checked is not None)
        upd[self.sc.reliability] = view["reliability"]
        judged = view["figures"].get("judges")
        upd[self.sc.judges] = gr.update(value=view["judges"], visible=bool(view["judges"]))
        upd[self.sc.judges_plot] = gr.update(value=judged, visible=judged is not None)
        return upd


def _wire(app: gr.Blocks, sc: Screen, h: Handlers, demo: bool) -> None:
    """Bind the events. `next_pair`, `vote`, `flag`, `undo` and `reopen` carry api_names (gradio_client's door)."""
    vote_inputs = [sc.strength, *sc.crit, sc.rationale, sc.token, sc.name, sc.state]  # after the choice (on_vote)
    out = [sc.prompt, sc.left, sc.right, sc.progress, sc.message, sc.token, sc.history, sc.state]
    app.load(h.on_next, [sc.name, sc.state], out, api_name="next_pair", js=ANON_JS if demo else None)
    app.load(h.on_admin_load, None, [sc.export_tab, sc.dash_tab], api_visibility="private")
    app.load(None, js=SHORTCUTS_JS)
    sc.name.submit(h.on_rename, [sc.name, sc.state], out, api_visibility="private", js=REMEMBER_NAME_JS)
    # One handler for every button: the browser buttons bind the choice, API callers pass it.
    optional = [sc.strength, sc.rationale, *sc.crit]
    for c, btn in sc.buttons.items():
        voted = btn.click(h.on_vote, [gr.State(c), *vote_inputs], out, api_visibility="private")
        voted.success(None, None, optional, js=RESET_JS)  # runs in the browser only
    gr.Button(visible=False).click(h.on_vote, [sc.choice, *vote_inputs], out, api_name="vote")
    for f, btn in sc.flags.items():
        btn.click(h.on_flag, [gr.State(f), sc.token, sc.name, sc.state], out, api_visibility="private")
    gr.Button(visible=False).click(h.on_flag, [sc.flag_reason, sc.token, sc.name, sc.state], out, api_name="flag")
    sc.undo.click(h.on_undo, [sc.name, sc.state], out, api_name="undo")
    sc.reopen.click(h.on_reopen, [sc.history_pick, sc.name, sc.state], out, api_name="reopen", js=PICK_JS)
    sc.export_btn.click(h.on_export, None, [sc.export_link], api_visibility="private")
    dash_out = [sc.findings, sc.by_annotator, *sc.plots.values(), sc.verified, sc.verified_plot, sc.reliability,
                sc.judges, sc.judges_plot, sc.checks]  # fmt: skip
    sc.release_btn.click(h.on_release, [sc.release_name], [sc.checks, sc.release_name], api_visibility="private")
    sc.refresh.click(h.on_dashboard, None, dash_out, api_visibility="private")
    sc.dash_tab.select(h.on_dashboard, None, dash_out, api_visibility="private")


def build_app(
    config: AppConfig, store: ComparisonStore, sampler: PairSampler, service: AnnotationService | None = None
) -> gr.Blocks:
    """The screen. Pass `service` to share it with another door (annotate.api); one is made otherwise."""
    service = service or make_service(config, store, sampler)
    with gr.Blocks(title=config.title, fill_width=False) as app:
        sc = _layout(config)
        _wire(app, sc, Handlers(config, store, sampler, service, sc), demo=config.auth is None)
    return app
