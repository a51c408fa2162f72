"""Start the real app (python app.py) on a free port for tests and benchmarks; shared by the app tests."""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

NASTY = (
    'Try this:\n\n<script>window.__pwned=1</script>\n\n<img src=x onerror="window.__pwned=2">\n\n'
    '```python\nprint("<b>ok</b>")\n```'
)


def write_pool(path: Path, n_prompts: int = 12, n_cands: int = 3, nasty: bool = True) -> Path:
    rows = []
    for p in range(n_prompts):
        turns = [{"role": "user", "content": f"Question {p}: what is {p} + {p}?"}]
        if p % 4 == 1:  # some multi-turn prompts
            turns = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello, how can I help?"},
                     *turns]  # fmt: skip
        for r in range(n_cands):
            text = NASTY if nasty and r == 0 else f"The answer is **{2 * p + r}**." + " Indeed." * r
            meta = json.dumps({"gold_score": -r} if p % 3 == 0 else {})
            rows.append({"prompt_id": f"p{p}", "prompt": turns, "response_id": f"r{r}", "response": text,
                         "source": f"model{r}", "meta": meta})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_gold_pool(path: Path, n_prompts: int = 40, n_cands: int = 3) -> Path:
    """A qualification pool (tests/test_qualify.py, test_app_qualify.py): every other prompt is gold (meta
    gold_score and a note saying why). Quality: r0 best ("right answer"), r2 worst, on every prompt. The best
    response is the shortest on two prompts in three and the longest on the third, as in real pools, where the
    padded answer is often not the better one."""
    rows = []
    for p in range(n_prompts):
        best_long = p % 3 == 2
        for r in range(n_cands):
            pad = (r if not best_long else n_cands - 1 - r) * 3
            text = ("right answer" if r == 0 else "wrong answer" if r == n_cands - 1 else "so-so answer") + (
                f" to question {p}." + " More words here." * pad
            )
            meta = {}
            if p % 2 == 0:
                meta = {"gold_score": -r, "note": ["correct and to the point", "half right", "wrong"][min(r, 2)]}
            rows.append({"prompt_id": f"p{p}", "prompt": f"Question {p}?", "response_id": f"r{r}", "response": text,
                         "source": f"m{r}", "meta": json.dumps(meta)})  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def answer_rank(text: str) -> int:
    """The quality rank (0 best) of a write_gold_pool response, from its text as shown."""
    return 0 if "right answer" in text else 1 if "so-so answer" in text else 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def login_cookies(url: str, user: str, password: str) -> dict[str, str]:
    """Log in through the app's POST /login (as gradio_client does); the session cookie(s) it sets.

    Raises urllib.error.HTTPError on a refused login (400 wrong credentials, 429 throttled).
    """
    data = urllib.parse.urlencode({"username": user, "password": password}).encode()
    with urllib.request.urlopen(urllib.request.Request(url + "/login", data=data), timeout=60) as r:
        pairs = (h.split(";", 1)[0].partition("=") for h in r.headers.get_all("Set-Cookie") or [])
        return {k.strip(): v.strip() for k, _, v in pairs}


class Server:
    def __init__(self, pool: Path, store: Path, *extra: str, log: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, str(ROOT / "app.py"), "--pool", str(pool), "--store", str(store),
               "--port", str(self.port), *extra]  # fmt: skip
        self.log = open(log or store.parent / f"server-{self.port}.log", "w")
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        atexit.register(self._reap)  # a test failing before it stops its server must not leave it running
        self._wait()

    def _reap(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def _wait(self, timeout: float = 300) -> None:  # generous: tests share a busy 2-core machine (120 s once ran out)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: see {self.log.name}")
            try:
                urllib.request.urlopen(self.url + "/config", timeout=2)
                return
            except urllib.error.HTTPError:
                return  # up, but behind a login (401) or redirecting to it
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"server not up after {timeout} s")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.log.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.kill(signal.SIGTERM)
