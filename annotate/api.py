"""A plain JSON API for annotating: the same actions as the screen, for scripts, AI judges and high rates.

    POST /api/v1/next    {"session"?: id, "name"?: str}                       -> a pair
    POST /api/v1/vote    {"session", "token", "choice", "strength"?, "criteria"?, "rationale"?}
    POST /api/v1/flag    {"session", "token", "reason"}
    POST /api/v1/undo    {"session"}
    POST /api/v1/reopen  {"session", "comparison_id"}

Every call goes through annotate.session.AnnotationService, the one the Gradio screen uses, so the rules are the
same (session bound to its first annotator, one record per token, limits, never two standing votes). Why a second
door at all: a Gradio event costs the server several times the vote itself (queue, server-sent events, component
post-processing); on the 2-core development machine the Gradio path saturates near 80 votes/s, a JSON call does
not (BENCHMARKS.md). With login, the caller sends the session cookie from POST /login; without, `name` (or an
anonymous id per session). Sessions live in this process (a replica does not know another's sessions: start a new
one after a failover, as a browser would).
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from typing import Any

from fastapi import Body, FastAPI, Request
from fastapi.responses import JSONResponse

from annotate.session import AnnotationService, NotSaved, SessionState, View, VoteError, check_name
from annotate.users import Authenticator

MAX_SESSIONS = 50_000  # the least recently used are forgotten beyond this (their client starts a new one)


class SessionTable:
    """API sessions by id (unguessable), least recently used dropped first."""

    def __init__(self, limit: int = MAX_SESSIONS):
        self.limit, self._lock, self._by_id = limit, threading.Lock(), OrderedDict()

    def get(self, session_id: str | None) -> SessionState:
        with self._lock:
            st = self._by_id.get(session_id) if session_id else None
            if st is None:
                if session_id:
                    raise VoteError("unknown or expired session: call /api/v1/next without one to start a new one")
                st = SessionState(session_id=uuid.uuid4().hex)
                self._by_id[st.session_id] = st
                while len(self._by_id) > self.limit:
                    self._by_id.popitem(last=False)
            self._by_id.move_to_end(st.session_id)
            return st


def add_json_api(app: FastAPI, service: AnnotationService, auth: Authenticator | None) -> None:
    """Register the /api/v1 routes on `app` (before Gradio is mounted at "/", so they take precedence)."""
    sessions = SessionTable()

    def annotator(request: Request, body: dict, st: SessionState) -> str:
        if auth is not None:
            user = auth.user_for_request(request)
            if not user:
                raise PermissionError("not logged in")
            return user
        name = body.get("name")
        if name:
            return check_name(name)
        return st.owner or f"anon-{st.session_id[:8]}"

    def handle(request: Request, body: Any, action) -> JSONResponse:
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        try:
            st = sessions.get(body.get("session"))
            view = action(st, annotator(request, body, st), body)
        except PermissionError as e:
            return JSONResponse({"error": str(e)}, status_code=401)
        except NotSaved as e:  # the server's fault, not the request's: try again later
            return JSONResponse({"error": str(e)}, status_code=503)
        except VoteError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        return JSONResponse(_payload(st, view))

    # Plain `def` handlers: FastAPI runs them in its thread pool, as the service's locks expect.
    def route(path: str, action) -> None:
        def endpoint(request: Request, body: Any = Body(None)) -> JSONResponse:
            return handle(request, body, action)

        app.add_api_route(f"/api/v1/{path}", endpoint, methods=["POST"])

    route("next", lambda st, who, b: service.next_pair(st, who))
    route("vote", lambda st, who, b: service.vote(
        st, who, b.get("choice"), b.get("strength", "clear"), b.get("criteria") or {}, b.get("rationale") or "",
        b.get("token") or "",
    ))  # fmt: skip
    route("flag", lambda st, who, b: service.flag(st, who, b.get("reason"), b.get("token") or ""))
    route("undo", lambda st, who, b: service.undo(st, who))
    route("reopen", lambda st, who, b: service.reopen(st, who, str(b.get("comparison_id") or "")))


def _payload(st: SessionState, view: View) -> dict:
    """The shown pair as data (texts as stored, in screen order: a = left), plus the screen's own messages."""
    pair = st.pair
    out: dict[str, Any] = {"session": st.session_id, "annotator": st.owner, "token": view.token, "pair": None,
                           "message_html": view.message}  # fmt: skip
    if pair is not None:
        left, right = pair.shown
        out["pair"] = {"index": pair.index, "prompt": pair.prompt, "a": left.text, "b": right.text}
    return out
