"""Every mistake `python rlhf/train.py` can be given ends as one `error: ...` line naming the flag, file or field,
with exit code 2, no traceback, and before any model loads (rlhf/preflight.py; issue 17 item 2).

The cases run in one child process, one after another, each as `rlhf.train.main(argv)` with file descriptor 2
captured (so warnings and log lines count against "one line" too) and with rlhf.models.resolve_model, the one door
every model and tokenizer load goes through, replaced by a function that raises: a case that reaches a model fails.
The cheap cases come first and must not even import torch; the last ones build a TRL config (torch, no model).
One case runs as a real `python rlhf/train.py` process, start-up re-exec included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures import synthetic_arithmetic

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}

# In the child: each case's exit code, its whole stderr, and whether torch was loaded by then.
HARNESS = r"""
import contextlib, json, os, sys, tempfile, time, traceback

import rlhf.models
from rlhf import train


class ModelLoad(BaseException):  # not an Exception: no handler of the code under test may swallow it
    pass


def refuse(*args, **kwargs):
    raise ModelLoad(f"a model was about to load: {args}")


rlhf.models.resolve_model = refuse
results = {}
for case, argv in json.loads(sys.argv[1]).items():
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err, open(os.devnull, "w") as out, contextlib.redirect_stdout(out):
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(err.fileno(), 2)
        try:
            code = train.main(argv)
        except SystemExit as e:  # argparse, and the exits that print their own line
            code = e.code if isinstance(e.code, int) or e.code is None else print(e.code, file=sys.stderr) or 1
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        results[case] = {"code": code, "stderr": err.read(), "s": time.perf_counter() - t0,
                         "torch": "torch" in sys.modules}
print(json.dumps(results))
"""

PAIRS, PROMPTS, RM = "{d}/prefs-train.parquet", "{d}/prompts.txt", "{d}/rm"
E, ARGS = "evaluate", ["--reward-model", RM, "--prompts", PROMPTS]
# id -> (argv, what the one line must say); "{d}" is the folder the inputs below are written to.
CHEAP = {
    "reward: no --data": (["reward"], ["--data is required"]),
    "reward: --data missing": (["reward", "--data", "{d}/nope.parquet"], ["--data {d}/nope.parquet: no such file"]),
    "reward: --data an empty export": (["reward", "--data", "{d}/empty-train.parquet"],
                                       ["--data", "no preference pairs"]),
    "reward: --data not an export": (["reward", "--data", PROMPTS], ["--data", "expected an export"]),
    "dpo: --data a folder, not a store": (["dpo", "--data", "{d}/folder"], ["--data", "not a comparison store"]),
    "dpo: --config missing": (["dpo", "--config", "{d}/nope.yaml"], ["--config {d}/nope.yaml: no such file"]),
    "dpo: --config not YAML": (["dpo", "--config", "{d}/broken.yaml"], ["--config", "not valid YAML at line 2"]),
    "dpo: recipe key unknown": (["dpo", "--config", "{d}/typo.yaml"], ["unknown option 'max_stepz'", "'max_steps'"]),
    "sft: recipe value of the wrong type": (["sft", "--config", "{d}/wrong-type.yaml"],
                                            ["max_steps: expected an int, got 'ten'"]),
    "reward: unknown flag": (["reward", "--data", PAIRS, "--warmup-ratio", "0.1"],
                             ["unrecognized arguments: --warmup-ratio"]),
    "reward: flag value of the wrong type": (["reward", "--max-steps", "ten"], ["--max-steps", "'ten'"]),
    "reward: Hub id neither a folder nor cached, offline": (
        ["reward", "--data", PAIRS, "--model", "no-such/model-xyz"],
        ["--model no-such/model-xyz: no such folder", "HF_HUB_OFFLINE"],
    ),
    "dpo: --model a folder without a model": (["dpo", "--data", PAIRS, "--model", "{d}/folder"],
                                              ["--model", "not a model folder"]),
    "sft: --eval-data missing": (["sft", "--data", PAIRS, "--eval-data", "{d}/nope-test.parquet"],
                                 ["--eval-data", "no such file"]),
    "reward: --output-dir is a file": (["reward", "--data", PAIRS, "--output-dir", PROMPTS],
                                       ["--output-dir", "a file is in the way"]),
    "sft: --resume without a checkpoint": (["sft", "--data", PAIRS, "--resume", "--output-dir", "{d}/no-run"],
                                           ["--resume: no checkpoint"]),
    "dpo: a parameter of another loss": (["dpo", "--data", PAIRS, "--loss-type", "simpo", "--ld-alpha", "0.5"],
                                         ["--ld-alpha does not apply to --loss-type simpo"]),
    "rloo: no --reward-model": (["rloo", "--data", PROMPTS], ["--reward-model is required"]),
    "rloo: --reward-model missing": (["rloo", "--data", PROMPTS, "--reward-model", "/nope"],
                                     ["--reward-model /nope: no such folder"]),
    "ppo: --data missing": (["ppo", "--reward-model", RM, "--data", "{d}/nope.jsonl"], ["--data", "no such file"]),
    "ppo: one prompt, no held-out split": (["ppo", "--reward-model", RM, "--data", "{d}/one-prompt.txt"],
                                           ["--data", "held-out split needs at least 2"]),
    "ppo: --model missing": (["ppo", "--reward-model", RM, "--data", PROMPTS, "--model", "{d}/nope-model"],
                             ["--model", "no such folder"]),
    "evaluate: nothing given": ([E], ["--policy is required"]),
    "evaluate: --policy missing": ([E, "--policy", "{d}/runs/dpo", *ARGS], ["--policy {d}/runs/dpo: no such folder"]),
    "evaluate: --objective for a one-head judge": ([E, "--policy", RM, *ARGS, "--objective", "correct=1"],
                                                   ["--objective", "single head"]),
    "grpo: --verifiers missing": (["grpo", "--reward-model", "none", "--data", PROMPTS, "--verifiers",
                                   "{d}/nope-pool.jsonl"], ["--verifiers", "no such file"]),
    "distill: --teacher missing": (["distill", "--teacher", "{d}/nope-teacher", "--student-layers", "2", "--prompts",
                                    PROMPTS], ["--teacher", "no such folder"]),
    "distill: two students": (["distill", "--student", RM, "--student-layers", "2", "--prompts", PROMPTS],
                              ["exactly one of"]),
    "pipeline: recipe missing": (["pipeline", "--config", "{d}/nope.yaml"], ["no such recipe"]),
    "pipeline: no --config": (["pipeline"], ["--config"]),
    "push: --model-dir not a model": (["push", "--model-dir", "{d}/folder", "--repo-id", "me/model", "--dry-run",
                                       "{d}/push-out"], ["--model-dir", "not a model directory"]),
    "unknown command": (["bogus"], ["unknown command 'bogus'"]),
}  # fmt: skip
# These build the command's TRL config, so torch loads; still no model.
TRL = {
    "rloo: generation batch not divisible by --num-generations": (
        ["rloo", "--reward-model", RM, "--data", PROMPTS, "--per-device-train-batch-size", "2"],
        ["RLOOConfig refuses", "num_generations (4)", "--num-generations", "--per-device-train-batch-size"],
    ),
    "dpo: a TRL option TRL refuses": (
        ["dpo", "--data", PAIRS, "--optim", "nonsense"],
        ["DPOConfig refuses", "--optim"],
    ),
}


def write_inputs(d: Path) -> None:
    """Inputs that pass every check but the one each case breaks. The reward model is a folder with a config.json
    and nothing else: it passes the checks, and would fail the moment anything tried to load it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(synthetic_arithmetic(n_prompts=8, wrong_per_prompt=1))
    pq.write_table(table, d / "prefs-train.parquet")
    pq.write_table(table.slice(0, 0), d / "empty-train.parquet")  # an export of a store with no usable votes
    (d / "prompts.txt").write_text("".join(f"What is {i} + {i} ?\n" for i in range(12)))
    (d / "one-prompt.txt").write_text("What is 1 + 1 ?\n")
    (d / "rm").mkdir()
    (d / "rm" / "config.json").write_text("{}")
    (d / "folder").mkdir()
    (d / "broken.yaml").write_text("max_steps: 3\n  learning_rate: [1e-5\n")
    (d / "typo.yaml").write_text("max_stepz: 3\n")
    (d / "wrong-type.yaml").write_text(f"data: {d}/prefs-train.parquet\nmax_steps: ten\n")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    d = tmp_path_factory.mktemp("mistakes")
    write_inputs(d)
    cases = {case: [a.format(d=d) for a in argv] for case, (argv, _) in {**CHEAP, **TRL}.items()}
    t0 = time.perf_counter()
    # cwd: the inputs' folder, so a case that got past its check could write nothing into the repository
    done = subprocess.run([sys.executable, "-c", HARNESS, json.dumps(cases)], cwd=d, env=ENV, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    print(f"\n{len(cases)} mistakes in {time.perf_counter() - t0:.1f} s (one process)")
    return {case: r | {"d": str(d)} for case, r in out.items()}


def _one_line_naming(r: dict, needles: list[str]) -> None:
    lines = r["stderr"].strip().splitlines()
    assert "Traceback" not in r["stderr"] and "a model was about to load" not in r["stderr"], r["stderr"][-3000:]
    assert r["code"] == 2, r["stderr"][-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), r["stderr"]
    for needle in needles:
        assert needle.format(d=r["d"]) in lines[0]


@pytest.mark.parametrize("case", list(CHEAP))
def test_a_mistake_is_one_line_and_exit_2_before_torch_loads(results, case):
    _one_line_naming(results[case], CHEAP[case][1])
    assert not results[case]["torch"]  # caught in well under a second: not even torch was imported


@pytest.mark.parametrize("case", list(TRL))
def test_trl_refusals_come_before_any_model_loads(results, case):
    _one_line_naming(results[case], TRL[case][1])


def test_the_script_itself_exits_2_in_one_line(tmp_path):
    """The real entry point (it re-executes itself once to set MALLOC_ARENA_MAX), not main() called in a process."""
    env = {k: v for k, v in ENV.items() if k != "MALLOC_ARENA_MAX"}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "rlhf" / "train.py"), "reward"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "error: --data is required (a preference export or a store directory)"
    ]
    assert time.perf_counter() - t0 < 60  # a generous bound for a loaded machine; about 0.5 s on a quiet one
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_hub_is_one_quick_question_not_minutes_of_retries(tmp_path):
    """Online (HF_HUB_OFFLINE unset) with a Hub that does not answer (here: a closed local port), a model id that is
    no folder and not in the cache is refused at once, not after a download's retries."""
    write_inputs(tmp_path)
    env = {k: v for k, v in ENV.items() if k != "HF_HUB_OFFLINE"} | {"HF_ENDPOINT": "http://127.0.0.1:9"}
    argv = ["reward", "--data", str(tmp_path / "prefs-train.parquet"), "--model", "no-such/model-xyz"]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "rlhf" / "train.py"), *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    _one_line_naming({"code": done.returncode, "stderr": done.stderr, "d": str(tmp_path)},
                     ["--model no-such/model-xyz: no such folder", "the Hub did not answer"])  # fmt: skip
    assert time.perf_counter() - t0 < 60  # HUB_TIMEOUT_S at most, plus start-up on a loaded machine


def test_help_of_every_command_renders_and_names_the_script():
    """--help of every command: the usage line names `python rlhf/train.py COMMAND`, and a "%" in a help text shows
    as one "%" (argparse %-formats help texts). bench/help_speed.py times them."""
    from rlhf.train import COMMANDS

    wrong = []
    for command in COMMANDS:
        done = subprocess.run([sys.executable, "rlhf/train.py", command, "--help"], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        text = " ".join(done.stdout.split())  # argparse wraps lines
        if done.returncode != 0:
            wrong.append(f"{command}: exit {done.returncode}: {done.stderr[-500:]}")
        elif not text.startswith(f"usage: python rlhf/train.py {command} "):
            wrong.append(f"{command}: {text[:60]!r}")
        elif "%%" in text or "%(" in text or ("--gradient-checkpointing" in text and "~30% speed" not in text):
            wrong.append(f"{command}: a help text shows a raw '%' format")
    assert wrong == []
