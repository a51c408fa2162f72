"""The app's HTTP front: our own login in front of the Gradio UI, and private export downloads.

`build_web_app(blocks, auth, exports)` returns a FastAPI app with these routes, registered before the Gradio
Blocks is mounted at "/" so they win over Gradio's own:

- `GET /login`: a small self-contained login form. `POST /login`: form fields `username`, `password` (what
  gradio_client's `Client(auth=...)` sends). Throttled attempts are answered 429 with Retry-After before any
  hashing; the scrypt check runs in a worker thread, one at a time (so a flood of bad logins holds at most one core
  and never the event loop). Success sets the HttpOnly `prefkit-session` cookie (a signed, expiring token, see
  annotate.users) and answers `{"success": true}`, or 303 to "/" for the HTML form.
- `GET /logout`: drops the cookie. `GET /exports/{token}`: a snapshot published by `ExportRegistry.publish`, for the
  user who made it only, once.

Gradio sees the login through `auth_dependency=Authenticator.user_for_request`: its API answers 401 without a valid
cookie, and `gr.Request.username` in every event handler is the cookie's user (Gradio's queue passes the
dependency's answer to the handler's request). An unauthenticated browser asking for the page "/" is redirected to
/login. Client addresses for throttling are `request.client.host`; uvicorn rewrites it from X-Forwarded-For only for
proxies it trusts (127.0.0.1 by default, FORWARDED_ALLOW_IPS), so behind a local reverse proxy each real client is
counted on its own.
"""

from __future__ import annotations

import html
import math
import os
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

# At module level: FastAPI resolves the routes' annotations (strings here) in this module's globals.
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.background import BackgroundTask

from annotate.users import Authenticator, LoginThrottle

if TYPE_CHECKING:
    import gradio as gr
    import pyarrow as pa

EXPORT_TTL_S = 600.0
# Logins waiting for the hashing thread; beyond this, new ones are turned away cheaply (each waits ~30 ms per one
# ahead of it, so a longer queue only adds latency for everyone).
MAX_WAITING_LOGINS = 64
# The only messages the login page shows; the query string picks one by code and never supplies text.
MESSAGES = {
    "bad": "Incorrect name or password.",
    "wait": "Too many attempts. Try again in {s} s.",
    "busy": "The server is busy. Try again in a moment.",
    "out": "You have logged out.",
}
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",
}
LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in · {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; background: #f6f7f9; color: #1f2328; margin: 0; }}
main {{ max-width: 340px; margin: 12vh auto; background: #fff; border: 1px solid #d8dee4; border-radius: 10px;
        padding: 28px 32px; }}
h1 {{ font-size: 1.2rem; margin: 0 0 6px; }} p.hint {{ color: #59636e; font-size: .9rem; margin: 0 0 18px; }}
label {{ display: block; font-size: .9rem; margin: 12px 0 4px; }}
input[type=text], input[type=password] {{ width: 100%; box-sizing: border-box; padding: 8px 10px; font-size: 1rem;
        border: 1px solid #d0d7de; border-radius: 6px; }}
button {{ margin-top: 18px; width: 100%; padding: 9px; font-size: 1rem; border: 0; border-radius: 6px;
          background: #ea580c; color: #fff; cursor: pointer; }}
.msg {{ background: #fff1f0; border: 1px solid #ffccc7; border-radius: 6px; padding: 8px 10px; font-size: .9rem; }}
</style></head>
<body><main>
<h1>{title}</h1><p class="hint">{hint}</p>
{message}
<form method="post" action="/login" autocomplete="on">
<input type="hidden" name="from_form" value="1">
<label for="username">Name</label>
<input id="username" name="username" type="text" autocomplete="username" required autofocus maxlength="64">
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required maxlength="1024">
<button type="submit">Log in</button>
</form>
</main></body></html>
"""


@dataclass(frozen=True)
class _Export:
    path: Path
    user: str
    expires: float
    filename: str


class ExportRegistry:
    """Snapshots written for one user, downloadable once by that user at /exports/{token} within ttl_s.

    Files live in a private temp directory (0700, files 0600) under unguessable names; expired ones are swept on
    every publish and download, and `close()` removes what is left.
    """

    def __init__(self, ttl_s: float = EXPORT_TTL_S, clock: Callable[[], float] = time.monotonic):
        self.ttl_s, self.clock = ttl_s, clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Export] = {}
        self._dir: Path | None = None

    def _directory(self) -> Path:
        with self._lock:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="prefkit-export-"))  # mode 0700
            return self._dir

    def publish(self, user: str, table: pa.Table) -> str:
        """Write `table` as Parquet for `user` ("" without login); returns the URL path to download it."""
        import pyarrow.parquet as pq

        self.sweep()
        token = secrets.token_urlsafe(32)
        path = self._directory() / f"{token}.parquet"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                pq.write_table(table, f)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        with self._lock:
            self._entries[token] = _Export(path, user, self.clock() + self.ttl_s, f"comparisons-{stamp}.parquet")
        return f"/exports/{token}"

    def take(self, token: str, user: str) -> _Export | None:
        """The export behind `token` if it is `user`'s and not expired; it is forgotten (one download)."""
        self.sweep()
        with self._lock:
            entry = self._entries.get(token)
            if entry is None or not secrets.compare_digest(entry.user.encode(), user.encode()):
                return None
            del self._entries[token]
        return entry

    def sweep(self) -> None:
        now = self.clock()
        with self._lock:
            gone = [t for t, e in self._entries.items() if e.expires <= now]
            paths = [self._entries.pop(t).path for t in gone]
        for p in paths:
            p.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            self._entries.clear()
            d, self._dir = self._dir, None
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)


class _LoginRedirect:
    """ASGI middleware: a browser GET of the page "/" without a session goes to /login (Gradio would answer 401)."""

    def __init__(self, app: Any, auth: Authenticator):
        self.app, self.auth = app, auth

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD") and scope["path"] in ("/", ""):
            if self.auth.user_for_request(Request(scope)) is None:
                await RedirectResponse("/login", status_code=303)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _is_https(request: Any) -> bool:
    return request.url.scheme == "https"


def build_web_app(
    blocks: gr.Blocks,
    auth: Authenticator | None,
    exports: ExportRegistry | None = None,
    *,
    css: str | None = None,
    title: str = "Annotation",
    hint: str = "Log in with the name and password your admin gave you.",
    throttle: LoginThrottle | None = None,
    max_waiting_logins: int = MAX_WAITING_LOGINS,
    routes: Callable[[FastAPI], None] | None = None,
) -> FastAPI:
    """The FastAPI app serving `blocks` at "/" (call `blocks.queue()` first); login is on iff `auth` is given.
    `routes(app)` registers more routes ahead of Gradio's catch-all mount (annotate.api's JSON API)."""
    import gradio as gr

    # No docs/openapi on the outer app: they would sit in front of Gradio and describe only these routes.
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    add_login_routes(app, auth, title, hint, throttle or LoginThrottle(), max_waiting_logins)
    add_export_route(app, auth, exports)
    if routes is not None:
        routes(app)
    if auth is not None:
        app.add_middleware(_LoginRedirect, auth=auth)
    return gr.mount_gradio_app(
        app, blocks, path="/", auth_dependency=auth.user_for_request if auth else None, css=css, show_error=True
    )


def _refused(code: str, browser: bool, status: int, detail: str, wait_s: float = 0.0) -> Response:
    """A refused login: back to the login page with a message code (a browser), or JSON with the status."""
    headers = {"Cache-Control": "no-store"}
    if status == 429:
        headers["Retry-After"] = str(max(1, math.ceil(wait_s)))
    if browser:
        suffix = f"&s={headers['Retry-After']}" if status == 429 else ""
        return RedirectResponse(f"/login?e={code}{suffix}", status_code=303, headers=headers)
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def add_login_routes(
    app: FastAPI, auth: Authenticator | None, title: str, hint: str, throttle: LoginThrottle, max_waiting_logins: int
) -> None:
    """GET/POST /login and /logout."""
    login = _login_handler(auth, throttle, max_waiting_logins)
    app.post("/login")(login)
    app.post("/login/")(login)

    @app.get("/login")
    @app.get("/login/")
    async def login_page(request: Request, e: str = "", s: int = 0) -> Response:  # async: no thread for a page
        if auth is None or auth.user_for_request(request) is not None:
            return RedirectResponse("/", status_code=303)
        message = MESSAGES.get(e, "").format(s=max(1, min(int(s), 86400)))
        body = LOGIN_PAGE.format(
            title=html.escape(title), hint=html.escape(hint),
            message=f'<p class="msg" role="alert">{html.escape(message)}</p>' if message else "",
        )  # fmt: skip
        return HTMLResponse(body, headers=PAGE_HEADERS)

    @app.get("/logout")
    @app.get("/logout/")
    async def logout(request: Request) -> Response:
        response = RedirectResponse("/login?e=out" if auth else "/", status_code=303)
        if auth is not None:
            response.delete_cookie(auth.cookie, path="/", httponly=True, samesite="lax", secure=_is_https(request))
        return response


def _login_handler(auth: Authenticator | None, throttle: LoginThrottle, max_waiting_logins: int):
    """The POST /login endpoint. Throttled attempts never hash; one scrypt runs at a time, and past
    `max_waiting_logins` waiting, a login is refused at once (a flood cannot queue without bound)."""
    hashing: list[anyio.CapacityLimiter] = []  # made on first use, inside the event loop

    def limiter() -> anyio.CapacityLimiter:
        if not hashing:
            hashing.append(anyio.CapacityLimiter(1))  # one scrypt at a time: a flood holds one core, no more
        return hashing[0]

    async def login(request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=10)  # a login needs three fields, no uploads
        name = str(form.get("username") or "").strip()
        password = str(form.get("password") or "")
        browser = form.get("from_form") == "1" or "text/html" in request.headers.get("accept", "")
        if auth is None:
            return RedirectResponse("/", status_code=303) if browser else JSONResponse({"success": True})
        address = request.client.host if request.client else "unknown"

        def too_many(wait: float) -> Response:
            detail = f"Too many login attempts; try again in {max(1, math.ceil(wait))} s."
            return _refused("wait", browser, 429, detail, wait)

        wait = throttle.wait(name, address)  # cheap, on the event loop: throttled attempts never hash
        if wait > 0:
            return too_many(wait)
        if limiter().statistics().tasks_waiting >= max_waiting_logins:
            return _refused("busy", browser, 429, "Too many logins at once; try again in a moment.", 1.0)

        def attempt() -> float | bool:
            # Re-checked here, one attempt at a time: logins queued behind a failure see the lock it started.
            wait = throttle.wait(name, address)
            if wait > 0:
                return wait
            ok = auth.check_password(name, password)
            if ok:
                throttle.succeeded(name)
            else:
                throttle.failed(name, address)
            return ok

        # Waiting requests hold no thread; only the one hashing does.
        outcome = await anyio.to_thread.run_sync(attempt, limiter=limiter())
        if outcome is not True:
            if outcome is not False:
                return too_many(float(outcome))
            return _refused("bad", browser, 400, "Incorrect credentials.")
        try:
            token = auth.issue(name)
        except KeyError:  # removed between the check and now
            return _refused("bad", browser, 400, "Incorrect credentials.")
        response = RedirectResponse("/", status_code=303) if browser else JSONResponse({"success": True})
        response.set_cookie(
            auth.cookie, token, max_age=int(auth.session_s), path="/", httponly=True, samesite="lax",
            secure=_is_https(request),
        )  # fmt: skip
        response.headers["Cache-Control"] = "no-store"
        return response

    return login


def add_export_route(app: FastAPI, auth: Authenticator | None, exports: ExportRegistry | None) -> None:
    """GET /exports/{token}: an admin's one-time download of an export the Dashboard made."""

    @app.get("/exports/{token}")
    def download_export(token: str, request: Request) -> Response:
        # One answer for unknown, expired, someone else's and no-longer-admin: nothing to learn by probing.
        missing = JSONResponse({"detail": "Not found"}, status_code=404, headers={"Cache-Control": "no-store"})
        if exports is None:
            return missing
        if auth is None:
            user = ""
        else:
            user = auth.user_for_request(request)
            if user is None or not auth.is_admin(user):
                return missing
        entry = exports.take(token, user)
        if entry is None or not entry.path.exists():
            return missing
        return FileResponse(
            entry.path, media_type="application/vnd.apache.parquet", filename=entry.filename,
            headers={"Cache-Control": "no-store"}, background=BackgroundTask(entry.path.unlink, missing_ok=True),
        )  # fmt: skip


def end_streams(app: FastAPI) -> None:
    """End the mounted Gradio app's heartbeat streams, which otherwise never finish: call it when shutting down,
    so the server is not left waiting for those connections to close."""
    for route in app.routes:
        stop = getattr(getattr(route, "app", None), "stop_event", None)
        if stop is not None:
            stop.set()
