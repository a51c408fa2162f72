"""Every command in README.md's ```bash blocks runs as written (issue 17), so the README cannot drift from the code.

The commands run in order, in a temporary folder that links the repository's app.py, annotate/, rlhf/, datasets/ and
recipes/ (so `runs/` and `votes/` land there), with `python` the running interpreter's environment, as after
`. .venv/bin/activate`. Scale comes only from variables the README never needs: PREFKIT_TEST_MODEL (rlhf.models:
"default" becomes a tiny model) and PREFKIT_TEST_MAX_STEPS (rlhf.config: caps steps and prompt counts). A command
that cannot run in a test is listed in NOT_RUN with its reason; a README command in neither set fails the test.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-sample.jsonl.gz"
HH_PAIRS = 60  # of the 1,000-pair CI sample: enough for a split and every stage, small enough to stay fast
APP_PORT = 7860  # the README serves on the default port

# README commands deliberately not run here, each with why. Keys are the command as in the README (continuations
# joined, trailing comment dropped).
NOT_RUN: dict[str, str] = {
    "make demo": "installs into .venv and then serves the app until stopped; its parts run below",
    "make test": "runs the whole suite, this test included",
    "pip install .": "installs packages from the network; tests/test_base_install.py covers the base install",
    "pip install '.[train]'": "installs packages from the network",
    "curl -s -c jar -d username=alice -d password=PW http://127.0.0.1:7860/login": (
        "PW is a placeholder; tests/test_app_api.py and tests/test_app_auth.py drive the JSON API and login"
    ),
    "curl -s -b jar -H 'content-type: application/json' -d '{}' http://127.0.0.1:7860/api/v1/next": (
        "needs the login cookie of the line above; tests/test_app_api.py"
    ),
    "curl -s -b jar -H 'content-type: application/json' "
    '-d \'{"session": "SESSION", "token": "TOKEN", "choice": "a", "strength": "clear"}\' '
    "http://127.0.0.1:7860/api/v1/vote": "SESSION and TOKEN are placeholders; tests/test_app_api.py",
    "python rlhf/train.py pipeline --config recipes/hh-smollm2.yaml": (
        "the recipe's data is the whole 1,000-pair HH sample and it starts five stages: 66 s even capped (load 7), "
        "over this test's budget; tests/test_pipeline.py runs the pipeline on tiny data"
    ),
    "python rlhf/train.py pipeline --config recipes/quick.yaml": (
        "the default model for a few steps per stage is still minutes of CPU (BENCHMARKS.md, the quick try); "
        "tests/test_pipeline.py runs the pipeline on tiny data and checks this recipe's stages and caps"
    ),
    "python app.py --store votes --users users.json --port 7860 &": (
        "two servers left running in the background; tests/test_replicas.py serves one store from two processes"
    ),
    "python app.py --store votes --users users.json --port 7861 &": "as the line above",
}

# Blocking servers: started as written, stopped once they answer HTTP.
SERVED = {
    "python app.py --pool datasets/demo/pool.jsonl --store votes --users runs/users.json --overlap 2 --gold-share 0.1"
}
PASSWORD = "correct horse battery staple"  # add-user reads one line of stdin when it is not a terminal


def readme_commands() -> list[str]:
    """The commands of README.md's ```bash blocks in order: continuations joined, comments and blank lines dropped."""
    text = (ROOT / "README.md").read_text()
    commands: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()  # no README command quotes a '#'
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def tiny_default_model(out: Path, texts: list[str]) -> Path:
    """A byte-level BPE tokenizer (as SmolLM2's, which --trim-vocab needs) with a ChatML template, and a 16-layer,
    16-wide Llama: deep enough for the README's `distill --student-layers 15`, small enough to train in seconds."""
    from fixtures import bpe_tokenizer, save_tiny_model

    return Path(save_tiny_model(out, bpe_tokenizer(texts, vocab_size=1500), layers=16, hidden=16, heads=2))


def free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def serve_until_it_answers(cmd: str, cwd: Path, env: dict[str, str], timeout: float = 90) -> None:
    """Start a blocking server command as written, wait until its login page answers, then stop it."""
    proc = subprocess.Popen(["bash", "-c", f"exec {cmd}"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"{cmd!r} exited {proc.returncode}:\n{proc.stdout.read()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{APP_PORT}/", timeout=5) as r:
                    if r.status < 500:
                        return
            except OSError:
                time.sleep(0.5)
        pytest.fail(f"{cmd!r} did not answer within {timeout:.0f} s")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_every_readme_command_runs_as_written(tmp_path: Path) -> None:
    commands = readme_commands()
    assert not (stale := set(NOT_RUN) - set(commands)), f"NOT_RUN names commands the README no longer has: {stale}"
    if not SHARED_SAMPLE.exists():
        pytest.skip(f"{SHARED_SAMPLE} (the HH-RLHF sample CI provides) is missing: the session imports it")

    # The layout the README's commands expect, in a folder of its own: outputs land in tmp, sources are the repo's.
    work = tmp_path / "repo"
    work.mkdir()
    for name in ("app.py", "annotate", "rlhf", "datasets", "recipes"):
        (work / name).symlink_to(ROOT / name)
    (tmp_path / "shared").symlink_to(ROOT.parent / "shared")  # recipes point at ../../shared/data
    if sys.prefix != sys.base_prefix:  # the README's `. .venv/bin/activate`, for the interpreter running the tests
        (work / ".venv").symlink_to(sys.prefix)
    # The Hub download the README names, as a slice of the same data.
    with gzip.open(SHARED_SAMPLE, "rt") as f:
        hh = [next(f) for _ in range(HH_PAIRS)]
    with gzip.open(work / "hh-rlhf.jsonl.gz", "wt") as f:
        f.writelines(hh)
    pool = (ROOT / "datasets/demo/pool.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in hh]
    model = tiny_default_model(tmp_path / "tiny-default", [r["chosen"] + r["rejected"] for r in rows] + pool)

    # What `. .venv/bin/activate` does (PATH), plus the scale knobs the README never needs.
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFKIT_TEST_MODEL": str(model),
        "PREFKIT_TEST_MAX_STEPS": "2",
        "PREFKIT_CACHE": str(tmp_path / "cache"),  # nothing converted or cached outside tmp
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    timings = (tmp_path / "timings.txt").open("w")  # kept with pytest's tmp folders, pass or fail
    for cmd in commands:
        if cmd in NOT_RUN:
            continue
        start = time.monotonic()
        if cmd in SERVED:
            if not free(APP_PORT):  # another server holds the README's port: nothing here can check this line
                print(f"[readme] port {APP_PORT} busy, not served: {cmd}")
                continue
            serve_until_it_answers(cmd, work, env)
        else:
            if cmd.startswith(". .venv/bin/activate") and sys.prefix == sys.base_prefix:
                continue  # no virtual environment to activate; `python` is already the test's interpreter
            r = subprocess.run(["bash", "-c", cmd], cwd=work, env=env, input=PASSWORD + "\n", capture_output=True,
                               text=True, timeout=600)  # fmt: skip
            assert r.returncode == 0, (
                f"README command failed ({r.returncode}): {cmd}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
            )
        print(f"{time.monotonic() - start:6.1f} s  {cmd}", file=timings, flush=True)
    assert (work / "runs/model-card-preview").is_dir()  # the session ran to its last line


def test_max_steps_hook_caps_only_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    from rlhf.config import TEST_MAX_STEPS_ENV, parse_config
    from rlhf.evaluate import EvalArgs
    from rlhf.ppo import PPOArgs

    assert parse_config(PPOArgs, ["--max-steps", "50"]).max_steps == 50
    monkeypatch.setenv(TEST_MAX_STEPS_ENV, "2")
    ppo = parse_config(PPOArgs, ["--max-steps", "50", "--eval-prompts", "1"])
    assert (ppo.max_steps, ppo.eval_prompts, ppo.reward_norm_prompts) == (2, 1, 2)
    assert parse_config(PPOArgs, []).max_steps == 2  # -1 (epochs) is capped too
    assert parse_config(EvalArgs, []).num_prompts == 2
