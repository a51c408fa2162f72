"""The base install (`pip install .`, no `[train]` extra) serves the labeling app and runs the data commands.

Each command runs in a fresh interpreter whose sitecustomize puts an import blocker first on sys.meta_path: the
`train` extra's packages (torch, transformers, TRL, ...) cannot be imported there, as if not installed. A blocker
rather than `sys.modules[name] = None`: scipy and others look torch up in sys.modules and would trip on None. The
data commands must not load rlhf/ either (it ships in the base install, but needs the extra to do anything); the
sitecustomize lists at exit which rlhf modules were loaded. tests/test_layers.py checks the same rule statically;
this proves the commands really run.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from annotate.store import read_table

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared/data/hh-rlhf-harmless-sample.jsonl.gz"  # real data, when the checkout has shared/
# The `train` extra's packages and what they bring along.
BLOCKED = ("torch", "transformers", "trl", "accelerate", "peft", "datasets", "gguf", "tokenizers", "safetensors")

SITECUSTOMIZE = f'''
import atexit
import os
import sys

BLOCKED = {set(BLOCKED)!r}


class TrainingStackBlocker:
    """Makes the training stack look uninstalled: importing any of BLOCKED raises ModuleNotFoundError."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: base install)", name=name)
        return None


sys.meta_path.insert(0, TrainingStackBlocker)


@atexit.register
def _log_rlhf_modules():
    if log := os.environ.get("PREFKIT_RLHF_LOG"):
        with open(log, "w") as f:
            f.write(" ".join(sorted(m for m in sys.modules if m.partition(".")[0] == "rlhf")))


def _exit(code, _real=os._exit):  # `python -m annotate` leaves through os._exit, which skips atexit
    _log_rlhf_modules()
    _real(code)


os._exit = _exit
'''


@pytest.fixture(scope="module")
def base_env(tmp_path_factory) -> dict[str, str]:
    """Environment for a subprocess that runs as if only the base install were present."""
    site = tmp_path_factory.mktemp("base-install-site")
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "MPLBACKEND": "Agg", "GRADIO_ANALYTICS_ENABLED": "False",
            "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1", "PREFKIT_RLHF_LOG_DIR": str(site)}  # fmt: skip


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run `python ARGS` under the blocker; it must succeed and load no rlhf module."""
    log = Path(env["PREFKIT_RLHF_LOG_DIR"]) / "rlhf-modules.txt"
    log.unlink(missing_ok=True)
    env = {**env, "PREFKIT_RLHF_LOG": str(log)}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert log.read_text() == "", f"{' '.join(args)} loaded rlhf modules: {log.read_text()}"
    return proc


def hh_file(tmp_path: Path) -> Path:
    """The shared HH-RLHF sample (real data) or, in a clone without shared/, a small file in the same format."""
    if HH.exists():
        return HH
    lines = []
    for i in range(60):
        q = f"\n\nHuman: question {i}?"
        good, bad = f"\n\nAssistant: answer {i}.", f"\n\nAssistant: a longer, worse answer to question {i}."
        lines.append(json.dumps({"chosen": q + good, "rejected": q + bad} if i % 3 else {"chosen": q + bad,
                                 "rejected": q + good}))  # fmt: skip
    path = tmp_path / "hh.jsonl.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    return path


def test_the_blocker_blocks(base_env):
    code = textwrap.dedent("""
        import importlib
        for m in ("torch", "torch.nn", "transformers", "trl", "datasets"):
            try:
                importlib.import_module(m)
            except ModuleNotFoundError:
                print(m)
    """)
    assert run(base_env, "-c", code).stdout.split() == ["torch", "torch.nn", "transformers", "trl", "datasets"]
    with pytest.raises(AssertionError, match="loaded rlhf modules: rlhf rlhf.models"):
        run(base_env, "-c", "import rlhf.models")


def test_app_help_and_data_commands_run_without_the_training_stack(base_env, tmp_path):
    assert "--pool" in run(base_env, "app.py", "--help").stdout
    # The command list imports no command module, so not rlhf's `generate` either.
    assert "push" in run(base_env, "-m", "annotate", "--help").stdout
    store, src = str(tmp_path / "store"), str(hh_file(tmp_path))
    for who in ("hh-a", "hh-b"):  # two annotators, so the audit's agreement statistics run too
        run(base_env, "-m", "annotate", "import", src, "--format", "hh", "--store", store, "--annotator", who)
    run(base_env, "-m", "annotate", "import", str(ROOT / "datasets/demo/pool.jsonl"), "--format", "pool",
        "--store", store)  # fmt: skip
    votes = read_table(store).num_rows
    assert votes > 0 and votes % 2 == 0

    run(base_env, "-m", "annotate", "export", "--store", store, "--out", str(tmp_path / "prefs.parquet"))
    assert pq.read_table(tmp_path / "prefs.parquet").num_rows == votes // 2  # the two annotators agree per pair
    assert "hh-a" in run(base_env, "-m", "annotate", "stats", "--store", store).stdout

    out = tmp_path / "audit.json"
    run(base_env, "-m", "annotate", "audit", "--store", store, "--json", str(out), "--report",
        str(tmp_path / "audit.html"), "--n-boot", "50")  # fmt: skip
    assert json.loads(out.read_text())["summary"]["votes"] == votes
    assert (tmp_path / "audit.html").stat().st_size > 0

    # Dataset publishing (annotate/hub.py) runs on the base install, without rlhf/.
    assert "--repo-id" in run(base_env, "-m", "annotate", "push", "--help").stdout
    run(base_env, "-m", "annotate", "push", "--store", store, "--repo-id", "me/prefs", "--dry-run",
        str(tmp_path / "hub"))  # fmt: skip
    assert (tmp_path / "hub/README.md").exists()


@pytest.mark.slow
def test_app_serves_its_json_api_without_the_training_stack(base_env, tmp_path, monkeypatch):
    httpx = pytest.importorskip("httpx")
    from apphelpers import Server, write_pool  # tests/ is on sys.path under pytest

    from annotate.users import add_user

    class BaseInstallServer(Server):
        def _wait(self, timeout: float = 240) -> None:  # generous: a cold Gradio start on a busy 2-core machine
            super()._wait(timeout)

    for key in ("PYTHONPATH", "MPLBACKEND", "TQDM_DISABLE"):  # Server passes os.environ on to app.py
        monkeypatch.setenv(key, base_env[key])
    log = tmp_path / "rlhf-modules.txt"  # written when the server exits: proves the blocker was in it, too
    monkeypatch.setenv("PREFKIT_RLHF_LOG", str(log))
    users, store = tmp_path / "users.json", tmp_path / "votes"
    add_user(users, "alice", "alice-pw")
    with BaseInstallServer(write_pool(tmp_path / "pool.jsonl", nasty=False), store, "--users", str(users)) as server:
        c = httpx.Client(base_url=server.url, timeout=60)
        assert c.post("/login", data={"username": "alice", "password": "alice-pw"}).status_code == 200
        shown = c.post("/api/v1/next", json={}).json()
        assert shown["annotator"] == "alice"
        voted = c.post("/api/v1/vote", json={"session": shown["session"], "token": shown["token"], "choice": "a"})
        assert voted.status_code == 200 and "Saved" in voted.json()["message_html"]
    rows = read_table(str(store)).to_pylist()
    assert [(r["annotator"], r["choice"] == r["left"]) for r in rows] == [("alice", True)]
    assert log.read_text() == ""  # the server ran under the blocker and loaded no rlhf module


def test_a_datasets_folder_without_the_train_extra_is_one_line_exit_2(base_env, tmp_path):
    """Reading a `datasets.save_to_disk` folder needs `datasets` (the train extra): one line naming it, exit 2."""
    folder = tmp_path / "saved"
    folder.mkdir()
    cmd = [sys.executable, "-m", "annotate", "import", str(folder), "--format", "trl", "--store", str(tmp_path / "s")]
    proc = subprocess.run(cmd, cwd=ROOT, env=base_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "prefkit[train]" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "s").exists()  # refused before anything was written
