"""rlhf.trl_compat: the one door to TRL/transformers internals checks them at import and says, in one line, what to
install when they are not there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf import trl_compat
from rlhf.trl_compat import NEEDS, TESTED, CompatError, check, message

ROOT = Path(__file__).resolve().parent.parent
PINNED = {"trl": TESTED["trl"], "transformers": TESTED["transformers"]}


def test_tested_versions_are_the_pinned_ones():
    text = (ROOT / "pyproject.toml").read_text()
    for package, version in TESTED.items():
        assert set(re.findall(rf'"{package}==([^"]+)"', text)) == {version}, package  # pinned, to that version


def test_the_pinned_versions_pass_silently(capsys):
    names = check(found=PINNED)
    assert set(names) == {f"{module}.{path}" for _, module, path in NEEDS}
    assert capsys.readouterr().err == ""
    # The module's re-exports are the checked objects themselves.
    assert trl_compat.add_fused_lm_head is names["trl.trainer.utils.add_fused_lm_head"]


def test_a_missing_name_fails_with_one_line_naming_the_version():
    needs = (*NEEDS, ("trl", "trl.kernels", "NoSuchKernel"))
    with pytest.raises(CompatError) as err:
        check(found={**PINNED, "trl": "1.10.0"}, needs=needs)
    assert str(err.value) == (
        "prefkit needs trl==1.16.0 (found 1.10.0; lacks trl.kernels.NoSuchKernel): pip install 'trl==1.16.0'"
    )
    assert isinstance(err.value, ImportError)  # raised while importing: an import that failed


def test_a_missing_module_and_a_changed_signature_are_missing_names():
    with pytest.raises(CompatError, match=r"^prefkit needs transformers==5\.24\.0 \(found 5\.24\.0; lacks "):
        check(found=PINNED, needs=(("transformers", "transformers.no_such_module", "thing"),))
    changed = {"trl.trainer.utils.add_fused_lm_head": ("model", "chunk_size")}
    with pytest.raises(CompatError, match=r"lacks trl\.trainer\.utils\.add_fused_lm_head\(model, chunk_size\)"):
        check(found=PINNED, signatures=changed)


def test_another_version_with_every_name_only_warns(capsys):
    check(found={**PINNED, "trl": "1.17.0"})
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("warning: prefkit needs trl==1.16.0 (found 1.17.0)"), err


def test_message_when_not_installed():
    assert message("transformers", None, ["a", "b", "c", "d", "e"]) == (
        "prefkit needs transformers==5.24.0 (not installed; lacks a, b, c and 2 more): "
        "pip install 'transformers==5.24.0'"
    )


FAKE_OLD_TRL = """
import sys
from importlib import metadata

real = metadata.version
metadata.version = lambda name: "1.10.0" if name == "trl" else real(name)  # pretend TRL 1.10 is installed ...
import trl.kernels
import trl.trainer.dpo_trainer  # (imported first: TRL's own modules keep their references and go on working)

del trl.kernels.ChunkedLogProbFunction  # ... which has no chunked log-prob kernel
from rlhf.train import main

sys.exit(main(sys.argv[1:]))
"""


def test_the_cli_prints_the_line_and_exits_2(tmp_path):
    from fixtures import arithmetic_tokenizer, save_tiny_model, write_synthetic_export

    model = save_tiny_model(tmp_path / "tiny", arithmetic_tokenizer(), layers=1, hidden=32, heads=2)
    data, _ = write_synthetic_export(tmp_path / "data", n_prompts=12, wrong_per_prompt=1)
    argv = ["dpo", "--model", model, "--data", str(data), "--output-dir", str(tmp_path / "out"), "--max-steps", "1",
            "--packing", "true"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", FAKE_OLD_TRL, *argv], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=600)  # fmt: skip
    assert run.returncode == 2, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    line = (
        "error: prefkit needs trl==1.16.0 (found 1.10.0; lacks trl.kernels.ChunkedLogProbFunction): "
        "pip install 'trl==1.16.0'"
    )
    assert run.stderr.rstrip().splitlines()[-1] == line, run.stderr[-3000:]
