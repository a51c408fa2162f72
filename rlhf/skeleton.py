"""The run every TRL trainer command (sft, reward, dpo) goes through, in this order:

    preflight   every input, model and setting checked, the TRL config built: a mistake exits 2 before anything
                is written or loaded (rlhf/preflight.py)
    start_run   output directory, config.yaml (a store pinned to its version), an empty metrics.jsonl; under
                --resume the original run's data and its metrics up to the checkpoint's step (rlhf/common.py)
    build       the command's trainer with its data, nothing trained yet
    measure     held-out figures before training (none for a reward model: an untrained head says nothing)
    train       from the last complete checkpoint under --resume: weights, optimizer, scheduler, RNG state and the
                position in the data all come back, so the loss curve continues as if never stopped
    measure     the same figures after training
    save        the model into the run directory
    report      eval.json (and its line in metrics.jsonl) with the optimizer steps taken, the model card, a summary
                line

A command subclasses TrainerRun with what it does differently (build, results, about, summary; measure and save
where needed) and keeps it in its own module.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlhf.common import BaseArgs, resume_checkpoint, start_run, write_eval, write_model_card
from rlhf.config import parse_config
from rlhf.preflight import preflight, trl_config_of


class TrainerRun:
    """One run of a trainer command: `run()` is the skeleton, the other methods are the command's parts."""

    command: str = ""  # as typed after rlhf/train.py
    config_class: type[BaseArgs] = BaseArgs
    # cfg -> (trainer, data info): the command module's build_trainer, which tests also call on their own
    build_trainer: Callable[[Any], tuple[Any, dict[str, Any]]] | None = None
    # cfg -> the TRL config build_trainer uses, built by preflight to surface TRL's refusals before anything loads;
    # None: rlhf.common.trl_args over the flags, without the command's extra keys (rlhf.preflight.trl_config_of)
    trl_config: Callable[[Any], Any] | None = None

    def __init__(self, cfg: BaseArgs) -> None:
        self.cfg = cfg
        self.trainer: Any = None
        self.info: dict[str, Any] = {}  # what load_data reports: pairs and tokens per split, the plan

    def build(self) -> Any:
        """The TRL trainer, ready to train (set self.info on the way)."""
        trainer, self.info = type(self).build_trainer(self.cfg)
        return trainer

    def measure(self) -> dict[str, Any]:
        """Held-out figures, taken before and after training."""
        return {}

    def save(self, out: Path) -> None:
        self.trainer.save_model(str(out))  # rank 0 only, with the weights gathered under ZeRO-3/FSDP

    def results(self, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
        """What eval.json records."""
        raise NotImplementedError

    def about(self) -> str:
        """The model card's one-line description."""
        raise NotImplementedError

    def summary(self, results: dict[str, Any], before: dict[str, Any], after: dict[str, Any]) -> str:
        """What the run prints last."""
        raise NotImplementedError

    def check(self) -> None:
        """rlhf/preflight.py's checks: --data is needed unless --resume reads it from the run's config.yaml, where
        a checkpoint must be to resume from."""
        resume_checkpoint(self.cfg)  # exits 2 when --resume finds no checkpoint
        required = {} if getattr(self.cfg, "resume", False) else {"data": "a preference export or a store directory"}
        preflight(self.cfg, required=required, trl_config=type(self).trl_config or trl_config_of(self.cfg))

    def run(self) -> dict[str, Any]:
        self.check()
        out = start_run(self.cfg)
        self.trainer = self.build()
        before = self.measure()
        self.trainer.train(resume_from_checkpoint=resume_checkpoint(self.cfg))
        after = self.measure()
        self.save(out)
        # What the optimizer did, not what was planned (--max-steps, an epoch's count, a resumed run's total).
        results = self.results(before, after) | {"steps": self.trainer.state.global_step}
        write_eval(out, results)
        write_model_card(out, self.cfg, self.command, results, self.about())
        print(self.summary(results, before, after))
        return results

    @classmethod
    def main(cls, argv: list[str] | None = None) -> int:
        """`python rlhf/train.py COMMAND ...`: the config from recipe and flags (TRL options included), then run."""
        cfg = parse_config(cls.config_class, argv, prog=f"python rlhf/train.py {cls.command}")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        cls(cfg).run()
        return 0
