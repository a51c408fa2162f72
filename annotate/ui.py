"""The annotation screen in Gradio. It translates events and nothing more: logic lives in annotate.session.

`build_app(config, store, sampler)` returns a gr.Blocks. Per-tab state is a SessionState in gr.State; every
handler returns a {component: gr.update(...)} dict. The events `next_pair`, `vote` and `undo` carry api_names,
so gradio_client annotates through the same code path (and the same login) as the browser.
"""

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from annotate.sampler import PairSampler
from annotate.schema import CRITERIA
from annotate.session import DEFAULT_GUIDELINES, AnnotationService, SessionState, View, VoteError, dashboard_view
from annotate.store import ComparisonStore
from annotate.users import Authenticator

assert CRITERIA == ("correct", "helpful", "harmless", "concise"), "on_vote names each criterion"

BUTTONS = (("a", "A is better", "1"), ("b", "B is better", "2"), ("tie", "Tie", "3"),
           ("both_bad", "Both bad", "4"), ("skip", "Skip", "5"))  # fmt: skip
# Clicks the button whose elem_id matches the key, unless the annotator is typing in a text field.
SHORTCUTS_JS = """
() => {
  const keys = {"1": "vote-a", "2": "vote-b", "3": "vote-tie", "4": "vote-both_bad", "5": "vote-skip", "u": "undo"};
  document.addEventListener("keydown", (e) => {
    const t = e.target;
    const typing = t && (t.isContentEditable || /INPUT|TEXTAREA|SELECT/.test(t.tagName));
    if (e.ctrlKey || e.metaKey || e.altKey || typing) return;
    const id = keys[e.key];
    const el = id && (document.querySelector("#" + id + " button") || document.getElementById(id));
    if (el) { e.preventDefault(); el.click(); }
  });
}
"""
CSS = """
.response { padding: 4px 0; }
.prompt { background: var(--background-fill-secondary); border-radius: 8px; padding: 12px 16px; }
#vote-row button { min-height: 48px; }
"""
# After a vote, the optional fields go back to their defaults so nothing carries over to the next pair.
RESET_JS = "() => ['clear', '', " + ", ".join(["'-'"] * 4) + "]"
PICKS = [("A", "a"), ("B", "b"), ("Same", "tie"), ("no pick", "-")]
KEY_HINT = "Keys: **1** A better · **2** B better · **3** tie · **4** both bad · **5** skip · **u** undo"


@dataclass
class AppConfig:
    title: str = "Which response is better?"
    guidelines: str = DEFAULT_GUIDELINES
    auth: Authenticator | None = None  # None: single-user demo mode (the local user is admin)
    default_annotator: str = "demo"
    export_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "prefkit-exports")


def build_app(config: AppConfig, store: ComparisonStore, sampler: PairSampler) -> "gr.Blocks":  # noqa: F821
    import gradio as gr

    service = AnnotationService(store, sampler)

    def who(name: str | None, request: gr.Request | None) -> str:
        """With login, the name is the logged-in user's and nothing the client sends can change it."""
        if config.auth is not None:
            user = getattr(request, "username", None)
            if not user:
                raise gr.Error("not logged in")
            return user
        return (name or "").strip() or config.default_annotator

    def is_admin(request: gr.Request | None) -> bool:
        return config.auth is None or config.auth.is_admin(getattr(request, "username", None))

    with gr.Blocks(title=config.title, fill_width=False) as app:
        state = gr.State(None)  # a SessionState, made on the first event of each tab
        gr.Markdown(f"## {config.title}")
        with gr.Row(equal_height=True):
            progress = gr.Markdown(elem_id="progress")
            name = gr.Textbox(
                value=config.default_annotator, label="Your name", scale=0, min_width=180,
                visible=config.auth is None, elem_id="annotator",
            )  # fmt: skip
        message = gr.Markdown(elem_id="message")
        with gr.Tabs():
            with gr.Tab("Annotate"):
                prompt = gr.Markdown(elem_classes="prompt", elem_id="prompt", label="Prompt")
                with gr.Row(equal_height=False):
                    with gr.Column():
                        gr.Markdown("#### Response A")
                        left = gr.Markdown(elem_classes="response", elem_id="response-a", max_height=560)
                    with gr.Column():
                        gr.Markdown("#### Response B")
                        right = gr.Markdown(elem_classes="response", elem_id="response-b", max_height=560)
                with gr.Row(elem_id="vote-row"):
                    buttons = {c: gr.Button(f"{label}  [{key}]", elem_id=f"vote-{c}", variant="secondary")
                               for c, label, key in BUTTONS}  # fmt: skip
                with gr.Row():
                    strength = gr.Radio(["slight", "clear", "much"], value="clear", label="How much better?")
                    undo = gr.Button("Undo last  [u]", elem_id="undo", size="sm", scale=0)
                with gr.Accordion("Details (optional): per-criterion picks and rationale", open=False):
                    with gr.Row():
                        crit = [gr.Radio(PICKS, value="-", label=f"More {c}") for c in CRITERIA]
                    rationale = gr.Textbox(value="", label="Rationale", lines=2, placeholder="Why? (optional)")
                gr.Markdown(KEY_HINT, elem_id="key-hint")
                token = gr.Textbox(value="", visible=False)  # guards against votes from a stale page
                choice = gr.Textbox(visible=False)  # API callers send the choice here
            with gr.Tab("Guidelines"):
                gr.Markdown(config.guidelines)
            with gr.Tab("Export", visible=False) as export_tab:
                gr.Markdown("A raw snapshot of every record (retractions included). For training data use "
                            "`python -m annotate export --store DIR --out prefs.parquet`.")  # fmt: skip
                export_btn = gr.Button("Write snapshot")
                export_file = gr.File(label="Snapshot", interactive=False)
            with gr.Tab("Dashboard", visible=False) as dash_tab:
                refresh = gr.Button("Refresh")
                findings = gr.Markdown(elem_id="findings")
                by_annotator = gr.Dataframe(label="Annotators", interactive=False)
                with gr.Row():
                    plots = {k: gr.Plot(label=k.capitalize()) for k in ("position", "length")}
                with gr.Row():
                    plots.update({k: gr.Plot(label=k.capitalize()) for k in ("annotators", "ranking")})

        pair_outputs = [prompt, left, right, progress, message, token]

        def render(view: View, st: SessionState) -> dict:
            # Every output must be set: Gradio turns an omitted one into an empty update that rebuilds the
            # component per session, the main server cost under load. Resets of the optional fields happen in
            # the browser instead (RESET_JS below), so a vote sends only what changes with the pair.
            return {prompt: view.prompt, left: view.left, right: view.right, progress: view.progress,
                    message: view.message, token: view.token, state: st}  # fmt: skip

        def on_next(name: str, st: SessionState | None, request: gr.Request):
            st = st or SessionState()
            return render(service.next_pair(st, who(name, request)), st)

        def on_vote(
            choice: str, strength: str | None, correct: str | None, helpful: str | None, harmless: str | None,
            concise: str | None, rationale: str, token: str, name: str, st: SessionState | None, request: gr.Request,
        ):  # fmt: skip
            st = st or SessionState()
            picks = dict(zip(CRITERIA, (correct, helpful, harmless, concise)))
            try:
                view = service.vote(st, who(name, request), choice, strength, picks, rationale, token)
            except VoteError as e:
                raise gr.Error(str(e)) from None
            return render(view, st)  # store.append has returned: the vote is durable

        def on_undo(name: str, st: SessionState | None, request: gr.Request):
            st = st or SessionState()
            return render(service.undo(st, who(name, request)), st)

        def on_admin_load(request: gr.Request):
            admin = is_admin(request)
            return {export_tab: gr.update(visible=admin), dash_tab: gr.update(visible=admin)}

        def on_export(request: gr.Request):
            if not is_admin(request):
                raise gr.Error("only admins can export")
            import pyarrow.parquet as pq

            config.export_dir.mkdir(parents=True, exist_ok=True)
            path = config.export_dir / "comparisons-snapshot.parquet"
            pq.write_table(store.read(), path)
            return {export_file: gr.update(value=str(path))}

        def on_dashboard(request: gr.Request):
            if not is_admin(request):
                raise gr.Error("only admins can see the dashboard")
            view = dashboard_view(store, sampler.gold)
            upd = {findings: view["findings"], by_annotator: view["annotators"]}
            upd.update({plots[k]: fig for k, fig in view["figures"].items() if k in plots})
            return upd

        vote_inputs = [strength, *crit, rationale, token, name, state]  # after the choice, in on_vote's order
        all_out = [*pair_outputs, state]
        app.load(on_next, [name, state], all_out, api_name="next_pair")
        app.load(on_admin_load, None, [export_tab, dash_tab], api_visibility="private")
        app.load(None, js=SHORTCUTS_JS)
        name.submit(on_next, [name, state], all_out, api_visibility="private")
        # One handler for every button: the browser buttons bind the choice, API callers pass it.
        optional = [strength, rationale, *crit]
        for c, btn in buttons.items():
            voted = btn.click(on_vote, [gr.State(c), *vote_inputs], all_out, api_visibility="private")
            voted.success(None, None, optional, js=RESET_JS)  # runs in the browser only
        api_vote = gr.Button(visible=False)
        api_vote.click(on_vote, [choice, *vote_inputs], all_out, api_name="vote")
        undo.click(on_undo, [name, state], all_out, api_name="undo")
        export_btn.click(on_export, None, [export_file], api_visibility="private")
        dash_out = [findings, by_annotator, *plots.values()]
        refresh.click(on_dashboard, None, dash_out, api_visibility="private")
        dash_tab.select(on_dashboard, None, dash_out, api_visibility="private")
    return app
