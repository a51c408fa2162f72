"""The login in front of the app (annotate.web): throttling, a bad-login flood, sessions ending on removal or a new
password, the login page, demo-mode safety, the user event handlers see, and private exports.

Run with `-s` to see the flood's latency figures.
"""

import io
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from contextlib import contextmanager

import pytest

gradio_client = pytest.importorskip("gradio_client")
httpx = pytest.importorskip("httpx")

from apphelpers import ROOT, Server, free_port, login_cookies, write_pool  # noqa: E402

from annotate.users import Authenticator, add_user, load_users, remove_user, save_users  # noqa: E402

pytestmark = pytest.mark.slow

USERS = ("alice", "bob", "carol", "dave", "erin", "frank")


def post_login(url: str, user: str, password: str, **kw) -> "httpx.Response":
    return httpx.post(url + "/login", data={"username": user, "password": password}, timeout=60, **kw)


def get(url: str, cookies: dict | None = None, **kw) -> "httpx.Response":
    return httpx.get(url, cookies=cookies, timeout=60, **kw)


def p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20)[18]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    d = tmp_path_factory.mktemp("auth")
    users = d / "users.json"
    for name in USERS:
        add_user(users, name, f"{name}-pw", admin=name == "frank")
    with Server(write_pool(d / "pool.jsonl"), d / "votes", "--users", str(users), "--seed", "1") as server:
        yield server, users


def test_wrong_passwords_throttled_other_user_unaffected(site):
    server, _ = site
    codes = [post_login(server.url, "alice", f"guess-{i}").status_code for i in range(5)]
    assert codes == [400] * 5, codes  # five free failures
    # The fifth locked alice for 1 s and each later failure doubles the lock. Fail until the lock is 8 s (waiting out
    # each lock as Retry-After says), so the checks below run inside it even on a loaded machine.
    failures = 5
    while failures < 8:
        r = post_login(server.url, "alice", f"guess-{failures}")
        if r.status_code == 429:
            time.sleep(int(r.headers["retry-after"]))
        else:
            assert r.status_code == 400, r.status_code
            failures += 1
    assert post_login(server.url, "alice", "guess-again").status_code == 429
    right = post_login(server.url, "alice", "alice-pw")  # right password, but alice is locked: no hashing, no hint
    assert right.status_code == 429 and "prefkit-session" not in right.cookies
    assert int(right.headers["retry-after"]) >= 1 and "try again in" in right.json()["detail"]
    with pytest.raises(Exception):  # noqa: B017 - gradio_client turns the 429 into its own error
        gradio_client.Client(server.url, auth=("alice", "alice-pw"), verbose=False, download_files=False)
    bob = post_login(server.url, "bob", "bob-pw")  # same address, other user: still fine
    assert bob.status_code == 200 and bob.json() == {"success": True} and bob.cookies.get("prefkit-session")
    assert get(server.url + "/config", bob.cookies).status_code == 200


def test_bad_login_flood_does_not_stall_the_app(site, capsys):
    server, _ = site
    cookies = login_cookies(server.url, "carol", "carol-pw")
    with httpx.Client(cookies=cookies, timeout=60) as probe_client:

        def probe() -> float:
            t = time.perf_counter()
            assert probe_client.get(server.url + "/config").status_code == 200
            return time.perf_counter() - t

        for _ in range(5):
            probe()  # warm up
        baseline = [probe() for _ in range(40)]
        stop, lock, codes = threading.Event(), threading.Lock(), Counter()

        def flood(seed: int) -> None:
            rnd = random.Random(seed)
            with httpx.Client(timeout=60) as c:
                while not stop.is_set():
                    # Made-up names from made-up addresses (X-Forwarded-For, trusted from 127.0.0.1 as from a local
                    # proxy): the worst case, where no throttle applies and every attempt is hashed.
                    ip = f"127.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
                    r = c.post(server.url + "/login", data={"username": f"u{rnd.randrange(10**9)}", "password": "pw"},
                               headers={"X-Forwarded-For": ip})  # fmt: skip
                    with lock:
                        codes[r.status_code] += 1

        threads = [threading.Thread(target=flood, args=(i,), daemon=True) for i in range(32)]
        for t in threads:
            t.start()
        time.sleep(1.0)  # let the flood build up
        during, end = [], time.time() + 5
        while time.time() < end:
            during.append(probe())
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join(timeout=60)
    ms = lambda xs: f"median {statistics.median(xs) * 1000:.1f} ms, p95 {p95(xs) * 1000:.1f} ms"  # noqa: E731
    with capsys.disabled():  # the measurement belongs in the test output, not only in a failure report
        print(f"\nGET /config baseline ({len(baseline)}): {ms(baseline)}")
        print(f"GET /config during a 32-thread bad-login flood ({len(during)}): {ms(during)}; "
              f"login answers {dict(codes)}")  # fmt: skip
    assert codes[400] > 20, codes  # the flood reached the password check
    assert p95(during) < max(1.0, 5 * p95(baseline))


def test_removed_or_repassworded_user_is_logged_out(site):
    server, users = site
    dave, erin = login_cookies(server.url, "dave", "dave-pw"), login_cookies(server.url, "erin", "erin-pw")
    client = gradio_client.Client(server.url, auth=("erin", "erin-pw"), verbose=False, download_files=False)
    join = server.url + "/gradio_api/queue/join"
    assert get(server.url + "/config", dave).status_code == 200
    assert httpx.post(join, json={}, cookies=dave, timeout=60).status_code != 401  # logged in (a bad body)

    remove_user(users, "dave")
    assert get(server.url + "/config", dave).status_code == 401  # at once, no restart
    assert httpx.post(join, json={}, cookies=dave, timeout=60).status_code == 401
    assert get(server.url + "/config", erin).status_code == 200
    assert post_login(server.url, "dave", "dave-pw").status_code == 400

    add_user(users, "erin", "erin-new-pw")
    assert get(server.url + "/config", erin).status_code == 401
    assert get(server.url + "/gradio_api/info", client.cookies).status_code == 401
    with pytest.raises(gradio_client.exceptions.AuthenticationError):  # the client's old cookie is refused
        gradio_client.Client(server.url, verbose=False, httpx_kwargs={"cookies": dict(client.cookies)})
    assert post_login(server.url, "erin", "erin-pw").status_code == 400
    assert get(server.url + "/config", login_cookies(server.url, "erin", "erin-new-pw")).status_code == 200


def test_page_redirects_to_login_form_and_form_logs_in(site):
    server, _ = site
    for path in ("/", "/?view=1"):
        r = get(server.url + path)
        assert r.status_code == 303 and r.headers["location"] == "/login"
    page = get(server.url + "/login")
    assert page.status_code == 200 and 'name="password"' in page.text and 'name="from_form"' in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "<script" not in page.text and "http" not in page.text  # self-contained
    evil = get(server.url + "/login", params={"e": "<script>alert(1)</script>", "s": "3"})
    assert evil.status_code == 200 and "alert" not in evil.text and "<script" not in evil.text
    assert "Try again in 12 s" in get(server.url + "/login?e=wait&s=12").text

    bad = httpx.post(server.url + "/login", data={"username": "frank", "password": "nope", "from_form": "1"})
    assert bad.status_code == 303 and bad.headers["location"] == "/login?e=bad"
    assert "Incorrect name or password" in get(server.url + bad.headers["location"]).text
    ok = httpx.post(server.url + "/login", data={"username": "frank", "password": "frank-pw", "from_form": "1"},
                    headers={"Accept": "text/html"})  # fmt: skip
    assert ok.status_code == 303 and ok.headers["location"] == "/"
    cookie = ok.headers["set-cookie"]
    assert cookie.startswith("prefkit-session=") and "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert "Secure" not in cookie and "Max-Age=43200" in cookie
    assert get(server.url + "/", ok.cookies).status_code == 200  # the Gradio page
    assert get(server.url + "/login", ok.cookies).headers["location"] == "/"  # logged in already
    out = get(server.url + "/logout", ok.cookies)
    assert out.status_code == 303 and out.headers["location"] == "/login?e=out"
    assert re.match(r'prefkit-session="?"?;', out.headers["set-cookie"]) and "Max-Age=0" in out.headers["set-cookie"]
    # Behind an https proxy on this machine the cookie is Secure.
    https = post_login(server.url, "frank", "frank-pw", headers={"X-Forwarded-Proto": "https"})
    assert https.status_code == 200 and "Secure" in https.headers["set-cookie"]


def test_demo_mode_refuses_network_host_without_login(tmp_path):
    pool, store = write_pool(tmp_path / "pool.jsonl"), tmp_path / "votes"
    cmd = [sys.executable, str(ROOT / "app.py"), "--pool", str(pool), "--store", str(store), "--host", "0.0.0.0",
           "--port", str(free_port())]  # fmt: skip
    t = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 2 and "--users" in run.stderr and "--insecure-no-login" in run.stderr, run.stderr
    assert time.perf_counter() - t < 30 and not store.exists()  # refused before loading anything
    server = Server(pool, store, "--host", "0.0.0.0", "--insecure-no-login")
    try:
        assert get(server.url + "/config").status_code == 200
    finally:
        server.kill(signal.SIGTERM)
    assert server.proc.returncode == 0  # SIGTERM: a graceful stop
    log = (store.parent / f"server-{server.port}.log").read_text()
    assert "WITHOUT LOGIN" in log and "serving at http://0.0.0.0:" in log and "Traceback" not in log


# --- in-process: what handlers see, private exports ---------------------------------------------------------------


@contextmanager
def serve_in_thread(app):
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_graceful_shutdown=1))  # fmt: skip
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "in-process server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def whoami_blocks():
    import gradio as gr

    with gr.Blocks() as demo:
        out = gr.Textbox()
        btn = gr.Button()

        def whoami(request: gr.Request) -> str:
            return f"user={request.username}"

        btn.click(whoami, None, out, api_name="whoami")
    return demo.queue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from annotate.web import ExportRegistry, build_web_app

    d = tmp_path_factory.mktemp("tiny")
    users = d / "users.json"
    for name in ("ann", "root", "boss"):
        add_user(users, name, f"{name}-pw", admin=name != "ann")
    exports = ExportRegistry()
    with serve_in_thread(build_web_app(whoami_blocks(), Authenticator(users), exports)) as url:
        yield url, users, exports
    exports.close()


def test_handlers_see_the_logged_in_user(tiny):
    url, users, _ = tiny
    c = gradio_client.Client(url, auth=("ann", "ann-pw"), verbose=False, download_files=False)
    assert c.predict(api_name="/whoami") == "user=ann"  # gr.Request.username comes from our session cookie
    with pytest.raises(Exception):  # noqa: B017
        gradio_client.Client(url, verbose=False, download_files=False).predict(api_name="/whoami")
    remove_user(users, "ann")
    with pytest.raises(Exception):  # noqa: B017 - the queue refuses the ended session (401)
        c.predict(api_name="/whoami")


def test_private_export_download(tiny):
    import pyarrow as pa
    import pyarrow.parquet as pq

    url, users, exports = tiny
    root, boss = login_cookies(url, "root", "root-pw"), login_cookies(url, "boss", "boss-pw")
    table = pa.table({"x": [1, 2, 3]})
    link = exports.publish("root", table)
    assert re.fullmatch(r"/exports/[A-Za-z0-9_-]{40,}", link)
    (path,) = exports._dir.iterdir()
    assert path.stat().st_mode & 0o077 == 0 and exports._dir.stat().st_mode & 0o077 == 0
    assert get(url + link).status_code == 404  # no login
    assert get(url + link, boss).status_code == 404  # another admin: same answer as an unknown token
    assert get(url + "/exports/" + "x" * 43, root).status_code == 404
    r = get(url + link, root)
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    assert pq.read_table(io.BytesIO(r.content)).equals(table)
    assert get(url + link, root).status_code == 404  # once
    deadline = time.time() + 10
    while path.exists() and time.time() < deadline:  # deleted once sent (a background task)
        time.sleep(0.05)
    assert not path.exists()

    clock = exports.clock
    try:
        late = exports.publish("root", table)
        exports.clock = lambda: clock() + exports.ttl_s + 1
        assert get(url + late, root).status_code == 404 and list(exports._dir.iterdir()) == []  # expired, swept
    finally:
        exports.clock = clock
    demoted = exports.publish("root", table)
    accounts = load_users(users)
    accounts["root"] = accounts["root"].__class__(**{**accounts["root"].__dict__, "admin": False})
    save_users(accounts, users)  # same salt and hash: the session stays, the admin right goes
    assert get(url + "/config", root).status_code == 200 and get(url + demoted, root).status_code == 404


def test_demo_mode_web_app_has_no_login(tmp_path):
    import pyarrow as pa
    from starlette.testclient import TestClient

    from annotate.web import ExportRegistry, build_web_app

    exports = ExportRegistry()
    try:
        client = TestClient(build_web_app(whoami_blocks(), None, exports))
        assert client.get("/", follow_redirects=False).status_code == 200
        assert client.get("/login", follow_redirects=False).headers["location"] == "/"
        link = exports.publish("", pa.table({"x": [1]}))
        assert client.get(link).status_code == 200 and client.get(link).status_code == 404
        assert client.get(exports.publish("someone", pa.table({"x": [1]}))).status_code == 404
    finally:
        exports.close()
