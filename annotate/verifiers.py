"""Verifiers: a machine check of whether a response to a checkable prompt is right.

A pool row may carry one at `meta.verifier` (annotate.pool.read_pool validates it on load); training toward what is
correct (GRPO's verifiable reward) and the audit's preferred-vs-correct figures read it. Four kinds:

- {"type": "exact", "answer": str}: the response's final answer equals `answer` after normalising (see below).
- {"type": "numeric", "answer": number, "tol": number}: the response's final number x passes when
  |x - answer| <= tol. `tol` is absolute (tol=0.05 on 37.8 accepts 37.75..37.85, for "round to one decimal");
  without it the tolerance is 1e-6 * max(1, |answer|): float noise only, relative for large answers, absolute
  for small ones.
- {"type": "regex", "pattern": str}: re.search(pattern, response) finds a match (the pattern is compiled when the
  spec is validated; use inline flags such as (?i) for case-insensitivity).
- {"type": "python", "test": str, "timeout": number = 5}: the response's code followed by `test` runs in a separate
  `python -I` process; it passes when the test finishes without an exception (asserts are the usual test).

Extraction rules (one rule each, so a policy trained on them knows what format is asked of it):
- Final answer (exact, numeric): if the response has a marker, "final answer" or "answer" followed by ":" or "is"
  (case-insensitive), the text after the last marker up to the end of its line is the final answer. Otherwise the
  candidates are the last non-empty line and the whole response.
- exact compares normalise(candidate) == normalise(answer): markdown emphasis (* _ `) and surrounding quotes
  dropped, case folded, runs of whitespace collapsed, leading/trailing whitespace and trailing . , ! ; : dropped.
  "Canberra." and "**canberra**" match "Canberra"; "Probably Canberra" and "Sydney, not Canberra" do not.
- numeric takes the first number after the last marker if there is a marker, else the last number in the response.
  Numbers are decimal, optionally signed and with an exponent; "1,234.5" is 1234.5 (comma thousands); a "-" right
  after a letter or digit is a hyphen, not a sign ("3-5" holds 3 and 5).
- python takes the first fenced code block tagged python/py or untagged; with no fenced block, the whole response.

Model output is untrusted: python code is never run in this process. It runs in a fresh interpreter in isolated
mode (-I: no PYTHON* variables, no user site, no script folder on sys.path), in a temporary folder of its own
(the test and harness files removed before the answer runs, so it cannot read the expected values), with an
environment of PATH/HOME/LANG only (no inherited secrets), stdin closed, limits on address space (1 GiB), CPU time
and file size (1 MiB, which also bounds its output), in its own process group that is killed whole on timeout. An
early exit does not pass: the harness must print a per-run token after the test, so `sys.exit(0)` or `os._exit(0)`
in the answer fail. This is containment against accidents and naive reward hacking, not a sandbox against a
determined attacker (no network or filesystem isolation); run untrusted models' code in a container too.
"""

from __future__ import annotations

import math
import os
import re
import resource  # imported here, not in the child: an import between fork and exec can deadlock on a lock
import secrets
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from annotate.schema import SchemaError

KINDS = ("exact", "numeric", "regex", "python")
DEFAULT_TOL = 1e-6  # relative (absolute below 1) when a numeric verifier gives no `tol`
DEFAULT_TIMEOUT = 5.0
MAX_TIMEOUT = 60.0  # a verifier runs once per sampled response in RL; longer tests make training unusably slow
MEMORY_LIMIT = 1 << 30  # bytes of address space for the test process
OUTPUT_LIMIT = 1 << 20  # bytes any file (stdout included) may reach: a print loop dies of SIGXFSZ, not our memory
# Keys each kind accepts; anything else is refused, so a typo ("tolerance") is an error, not a silent default.
_KEYS = {
    "exact": {"type", "answer"},
    "numeric": {"type", "answer", "tol"},
    "regex": {"type", "pattern"},
    "python": {"type", "test", "timeout"},
}
_MARKER = re.compile(r"(?i)\b(?:final\s+answer|answer)\b\s*(?::|=|\bis\b)\s*")
_NUMBER = re.compile(r"(?<![\w.])[-+\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|(?<![\w.])\d*\.\d+")
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_HARNESS = """\
import os, sys
token = sys.argv.pop(1)  # out of sys.argv before the answer runs
ns = {"__name__": "answer"}  # not __main__: an answer's `if __name__ == "__main__":` demo does not run
try:
    with open("answer.py", encoding="utf-8") as f, open("test.py", encoding="utf-8") as g:
        answer, test = compile(f.read(), "answer.py", "exec"), compile(g.read(), "test.py", "exec")
    for name in ("answer.py", "test.py", "harness.py"):
        os.remove(name)  # the answer cannot read the test (to hard-code its expected values) or this harness
    exec(answer, ns)
    exec(test, ns)
except BaseException:  # SystemExit too: an answer that exits before the test ran has not passed it
    import traceback
    traceback.print_exc()
    sys.exit(1)
sys.stdout.write("\\n" + token + "\\n")
sys.stdout.flush()
"""


def _fail(where: str, field: str, why: str) -> SchemaError:
    prefix = f"{where}: " if where else ""
    return SchemaError(f"{prefix}field '{field}': {why}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate(spec: dict, where: str, field: str = "meta.verifier") -> None:
    """Raise SchemaError naming `where` (e.g. "pool.jsonl: line 7") and the field (e.g. 'meta.verifier.tol') when
    `spec` is not a well-formed verifier. `field` is the spec's own place in the record."""
    if not isinstance(spec, dict):
        raise _fail(where, field, f"expected an object with a 'type', got {type(spec).__name__}")
    kind = spec.get("type")
    if kind not in KINDS:
        raise _fail(where, f"{field}.type", f"must be one of {KINDS}, got {kind!r}")
    extra = sorted(set(spec) - _KEYS[kind])
    if extra:
        raise _fail(where, f"{field}.{extra[0]}", f"unknown for a {kind} verifier (known: {sorted(_KEYS[kind])})")
    if kind == "exact":
        answer = spec.get("answer")
        if not isinstance(answer, str) or not normalise(answer):
            raise _fail(where, f"{field}.answer", f"expected non-empty text, got {answer!r}")
    elif kind == "numeric":
        if not _is_number(spec.get("answer")):
            raise _fail(where, f"{field}.answer", f"expected a finite number, got {spec.get('answer')!r}")
        tol = spec.get("tol", DEFAULT_TOL)
        if not _is_number(tol) or tol < 0:
            raise _fail(where, f"{field}.tol", f"expected a non-negative number, got {tol!r}")
    elif kind == "regex":
        pattern = spec.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise _fail(where, f"{field}.pattern", f"expected a non-empty regular expression, got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as e:
            raise _fail(where, f"{field}.pattern", f"not a valid regular expression ({e})") from None
    else:
        test = spec.get("test")
        if not isinstance(test, str) or not test.strip():
            raise _fail(where, f"{field}.test", f"expected non-empty Python code, got {test!r}")
        try:
            compile(test, "test.py", "exec")  # the test is trusted data: a syntax error is the pool's mistake
        except (SyntaxError, ValueError) as e:
            raise _fail(where, f"{field}.test", f"not valid Python ({e})") from None
        timeout = spec.get("timeout", DEFAULT_TIMEOUT)
        if not _is_number(timeout) or not 0 < timeout <= MAX_TIMEOUT:
            raise _fail(where, f"{field}.timeout", f"expected seconds in (0, {MAX_TIMEOUT:g}], got {timeout!r}")


def verify(spec: dict, response: str) -> bool:
    """Whether `response` passes the verifier `spec` (validated here too: a bad spec raises SchemaError)."""
    validate(spec, "")
    kind = spec["type"]
    if kind == "exact":
        want = normalise(spec["answer"])
        return any(normalise(c) == want for c in final_answers(response))
    if kind == "numeric":
        got = final_number(response)
        answer = float(spec["answer"])
        tol = float(spec["tol"]) if "tol" in spec else DEFAULT_TOL * max(1.0, abs(answer))
        return got is not None and abs(got - answer) <= tol
    if kind == "regex":
        return re.search(spec["pattern"], response) is not None
    return run_python(extract_code(response), spec["test"], timeout=float(spec.get("timeout", DEFAULT_TIMEOUT)))


# -- extraction ------------------------------------------------------------------------------------------------
def normalise(text: str) -> str:
    """Text as exact answers compare it: emphasis and quotes dropped, case folded, whitespace collapsed, trailing
    punctuation dropped."""
    text = re.sub(r"[*_`]", "", text).casefold()
    text = " ".join(text.split())
    return text.strip().rstrip(".,!;:").strip().strip("\"'\u201c\u201d\u2018\u2019").strip()


def _after_marker(response: str) -> str | None:
    """The text after the last final-answer marker, to the end of its line; None without a marker."""
    ends = [m.end() for m in _MARKER.finditer(response)]
    if not ends:
        return None
    return response[ends[-1] :].split("\n", 1)[0]


def final_answers(response: str) -> list[str]:
    """The candidate final answers of a response, per the module's extraction rule."""
    marked = _after_marker(response)
    if marked is not None:
        return [marked]
    lines = [line for line in response.splitlines() if line.strip()]
    return [lines[-1], response] if lines else [response]


def _to_float(token: str) -> float:
    return float(token.replace(",", "").replace("\u2212", "-"))


def final_number(response: str) -> float | None:
    """The first number after the last marker, else the last number in the response; None when there is none."""
    marked = _after_marker(response)
    if marked is not None:
        m = _NUMBER.search(marked)
        if m:
            return _to_float(m.group())
    found = _NUMBER.findall(response)
    return _to_float(found[-1]) if found else None


def extract_code(response: str) -> str:
    """The first fenced block tagged python/py or untagged; else the whole response."""
    for m in _FENCE.finditer(response):
        if m.group(1).lower() in ("", "python", "py", "python3"):
            return m.group(2)
    return response


# -- running code ----------------------------------------------------------------------------------------------
def _limits(cpu_seconds: int) -> None:
    """Runs in the child between fork and exec (calls only, no imports or allocation-heavy work, since a threaded
    parent, a trainer, may have held a lock at fork): soft and hard limits alike, so the answer cannot raise them."""
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT, OUTPUT_LIMIT))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def run_python(code: str, test: str, *, timeout: float = DEFAULT_TIMEOUT) -> bool:
    """Run `code` then `test` in a separate, limited `python -I` process; True when the test completed."""
    token = secrets.token_hex(16)
    cpu = math.ceil(timeout) + 1
    with tempfile.TemporaryDirectory(prefix="prefkit-verify-") as tmp:
        folder = Path(tmp)
        (folder / "answer.py").write_text(code, encoding="utf-8", errors="surrogatepass")
        (folder / "test.py").write_text(test, encoding="utf-8")
        (folder / "harness.py").write_text(_HARNESS, encoding="utf-8")
        env = {"PATH": os.defpath, "HOME": tmp, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        with open(folder / "out.txt", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-I", "harness.py", token],
                cwd=tmp,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.DEVNULL,
                preexec_fn=lambda: _limits(cpu),
                start_new_session=True,  # its own process group: a timeout kills whatever it spawned too
            )
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = None
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # also after a normal exit: children it left behind
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        if rc != 0:
            return False
        tail = (folder / "out.txt").read_bytes()[-200:].decode("utf-8", "replace")
        return tail.rstrip("\n").rsplit("\n", 1)[-1] == token
