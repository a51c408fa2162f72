"""`python rlhf/train.py COMMAND ...`: train and evaluate on collected comparisons.

Each command is a module exposing `main(argv) -> int`, imported only when it runs (so --help is instant).
Flags come from that module's `*Args` dataclass, optionally seeded from `--config recipes/NAME.yaml`. Bad data
(SchemaError) and command-line mistakes (UsageError, and the parser's own) end as one `error: ...` line with exit
code 2, found before any model loads (rlhf/preflight.py).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script: make the repository root importable so `rlhf.*` resolves.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COMMANDS = {
    "sft": ("rlhf.sft", "supervised warm-up on chosen responses (TRL SFTTrainer)"),
    "reward": ("rlhf.reward", "train a reward model on comparisons (TRL RewardTrainer)"),
    "dpo": ("rlhf.dpo", "direct preference optimisation (TRL DPOTrainer)"),
    "ppo": ("rlhf.ppo", "PPO against a reward model (our implementation; TRL 1.x has none)"),
    "rloo": ("rlhf.rloo", "RLOO against a reward model (TRL RLOOTrainer)"),
    "grpo": ("rlhf.grpo", "GRPO on a reward model blended with verifiers (TRL GRPOTrainer)"),
    "judge": ("rlhf.judge", "an AI judge votes on pool pairs in both orders, into the store as judge:<model>"),
    "evaluate": ("rlhf.evaluate", "reward-model win rate of a policy over a reference, length-controlled"),
    "pipeline": ("rlhf.pipeline", "data -> reward -> dpo -> ppo -> rloo -> evaluate in one command, with a report"),
    "distill": ("rlhf.distill", "distil a policy into a smaller, faster student"),
    "push": ("rlhf.hub", "publish a trained model to the Hugging Face Hub"),
}


def usage() -> str:
    lines = ["usage: python rlhf/train.py COMMAND [--config recipe.yaml] [flags]", "", "commands:"]
    lines += [f"  {name:<10} {help_text}" for name, (_, help_text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0]!r} (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        run = getattr(module, f"main_{argv[0]}", None) or module.main  # `main_push`: rlhf.hub has no plain main
        return int(run(argv[1:]) or 0)
    except ImportError as e:
        # rlhf.trl_compat's CompatError is one line naming the TRL/transformers version to install: print it, not a
        # traceback. Matched by module, since importing the class here would import TRL for every command.
        if type(e).__module__ != "rlhf.trl_compat":
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        # Bad data (annotate.schema.SchemaError) and command-line mistakes (annotate.errors.UsageError): one line,
        # exit 2, as `python -m annotate` reports them. Any other ValueError is a bug and keeps its traceback.
        from annotate.errors import UsageError
        from annotate.schema import SchemaError

        if not isinstance(e, SchemaError | UsageError):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


def cpu_threads(cores: int | None = None, load: float | None = None) -> int:
    """Threads for torch's CPU work when the user has not chosen (OMP_NUM_THREADS unset): the cores this process
    may use, less the other work already running (the 1-minute load average), at least one.

    torch takes every core by default; on a busy 2-core machine that oversubscribes the CPU and made generation 8x
    and a reward step 3.4x slower than one thread (issue 17), while on a quiet machine all cores are fastest."""
    import os

    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    load = load if load is not None else os.getloadavg()[0]
    return max(1, min(cores, round(cores - load)))


if __name__ == "__main__":
    import os

    asks_help = any(a in ("-h", "--help") for a in sys.argv[1:])  # prints and exits: no need to start twice
    if sys.platform == "linux" and "MALLOC_ARENA_MAX" not in os.environ and not asks_help:
        # glibc gives each thread that allocates its own malloc arena; with torch's threads these hold freed memory
        # apart. Two arenas cut the reward recipe's peak resident memory from 4.22 GB to 3.84 GB on a 2-core CPU
        # (BENCHMARKS.md). The variable is read when the process starts, hence the re-exec.
        os.environ["MALLOC_ARENA_MAX"] = "2"
        # CPU threads, read at start like the arena limit: the free cores, unless the user set OMP_NUM_THREADS.
        # Not for `pipeline`, whose stages start later and decide for themselves.
        if "OMP_NUM_THREADS" not in os.environ and sys.argv[1:2] != ["pipeline"]:
            n, cores = cpu_threads(), len(os.sched_getaffinity(0))
            os.environ["OMP_NUM_THREADS"] = str(n)
            if n < cores:  # printed when the first model loads (rlhf.models.resolve_model), not before a mistake
                os.environ["PREFKIT_THREADS_NOTICE"] = (f"[threads] {n} of {cores} CPU threads: other work is running "
                    f"(load {os.getloadavg()[0]:.1f}); set OMP_NUM_THREADS to choose")  # fmt: skip
        os.execv(sys.executable, [sys.executable, *sys.argv])
    code = main()
    # Skip the interpreter's teardown: Arrow's background threads can abort the process after all work is done
    # ("terminate called without an active exception", apache/arrow#34314; seen here once in a two-process run),
    # turning a finished run into exit code 134 and stopping a pipeline. Every file the run writes is closed by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
