"""The one door to TRL's and transformers' internals: every private or unstable name prefkit uses comes from here.

prefkit pins TRL and transformers (pyproject.toml) to the versions its suite ran against, because a few of its
speed-ups reach past their public APIs:

- rlhf/packing.py: TRL's chunked LM-head kernel and fused-head output (`trl.kernels`, `trl.trainer.utils`), a hook
  before DPOTrainer's private reference pass (`_precompute_ref_logps`), and transformers deriving packed-sequence
  boundaries from restarting position ids (`masking_utils.find_packed_sequence_indices`);
- rlhf/dpo_losses.py: skipping that reference pass for SimPO, which has no reference;
- rlhf/distill.py: GKD, which TRL keeps in `trl.experimental`;
- rlhf/ppo.py: the Trainer's weight-decay parameter split (`transformers.trainer_pt_utils`).

Importing this module checks that each of them exists, with the signature prefkit calls it with. If one is missing it
raises `CompatError`, whose message is one line naming the version to install; the CLIs print it and exit 2. With
everything present but another version installed, it prints a one-line warning and goes on: the names are there, and
the packing tests (tests/test_packing.py) are what tell whether their behaviour still matches.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from typing import Any

TESTED = {"trl": "1.16.0", "transformers": "5.24.0"}  # keep in step with pyproject.toml

# (package, module, attribute path): each private or unstable name prefkit reaches for.
NEEDS: tuple[tuple[str, str, str], ...] = (
    ("trl", "trl.kernels", "ChunkedLogProbFunction"),
    ("trl", "trl.trainer.utils", "FusedCausalLMOutput"),
    ("trl", "trl.trainer.utils", "add_fused_lm_head"),
    ("trl", "trl", "DPOTrainer._precompute_ref_logps"),
    ("trl", "trl.experimental.gkd", "GKDConfig"),
    ("trl", "trl.experimental.gkd", "GKDTrainer"),
    ("transformers", "transformers.masking_utils", "find_packed_sequence_indices"),
    ("transformers", "transformers.trainer_pt_utils", "get_parameter_names"),
)
# Parameters called by position or keyword, so a reordering or rename fails here rather than computing garbage.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "trl.kernels.ChunkedLogProbFunction.forward": tuple(
        "ctx hidden weight bias targets temperature chunk_size final_logit_softcapping logit_scale outputs".split()
    ),
    "trl.trainer.utils.add_fused_lm_head": ("model", "temperature", "cast_lm_head_to_fp32", "outputs"),
    "trl.DPOTrainer._precompute_ref_logps": ("self", "dataset", "name", "batch_size"),
    "trl.trainer.utils.FusedCausalLMOutput": tuple(
        "loss log_probs entropy log_sum_sq_probs mean_logits is_top1 label_mask".split()
    ),
    "transformers.trainer_pt_utils.get_parameter_names": ("model", "forbidden_layer_types", "forbidden_layer_names"),
}
LM_HEAD_CHUNK = 32768  # vocabulary columns per tile: the size TRL's own fused head uses (trl/trainer/utils.py)


class CompatError(ImportError):
    """TRL or transformers lacks a name prefkit uses; the message is one line saying what to install."""


def message(package: str, found: str | None, lacking: Iterable[str] = ()) -> str:
    """The one line: `prefkit needs trl==1.16.0 (found 1.10.0; lacks ...): pip install 'trl==1.16.0'`."""
    want = f"{package}=={TESTED[package]}"
    lacking = list(lacking)
    detail = f"found {found}" if found else "not installed"
    if lacking:
        detail += f"; lacks {', '.join(lacking[:3])}" + (f" and {len(lacking) - 3} more" if len(lacking) > 3 else "")
    return f"prefkit needs {want} ({detail}): pip install '{want}'"


def installed_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for package in TESTED:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def resolve(module: str, path: str) -> Any:
    """`module`'s attribute `path` (dotted), importing the module; AttributeError/ImportError if it is not there."""
    with warnings.catch_warnings():
        # trl.experimental warns on import that its APIs may change; the pin and this check are the answer to that.
        warnings.filterwarnings("ignore", message=".*trl.experimental.*")
        obj: Any = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _parameters(obj: Any) -> tuple[str, ...]:
    if isinstance(obj, type) and hasattr(obj, "__dataclass_fields__"):
        return tuple(obj.__dataclass_fields__)
    return tuple(inspect.signature(obj).parameters)


def check(
    found: Mapping[str, str | None] | None = None,
    needs: Iterable[tuple[str, str, str]] = NEEDS,
    signatures: Mapping[str, tuple[str, ...]] | None = None,
) -> dict[str, Any]:
    """Resolve every needed name; raise `CompatError` (one line) if one is missing or takes other parameters, and
    print a one-line warning if all are there but the installed version is not the tested one. Returns the names
    by their dotted path. `found` (installed versions) and `needs` are parameters so tests can fake another TRL."""
    found = installed_versions() if found is None else found
    signatures = SIGNATURES if signatures is None else signatures
    names: dict[str, Any] = {}
    lacking: dict[str, list[str]] = {}
    for package, module, path in needs:
        try:
            names[f"{module}.{path}"] = resolve(module, path)
        except (ImportError, AttributeError):
            lacking.setdefault(package, []).append(f"{module}.{path}")
    for dotted, params in signatures.items():
        owner, _, attr = dotted.rpartition(".")
        if dotted not in names and owner not in names:
            continue  # its owner is missing, and already reported
        obj = names[dotted] if dotted in names else getattr(names[owner], attr, None)
        if obj is None or _parameters(obj)[: len(params)] != params:
            lacking.setdefault(dotted.split(".")[0], []).append(f"{dotted}({', '.join(params)})")
    for package, missing in lacking.items():
        raise CompatError(message(package, found.get(package), missing))
    for package, version in found.items():
        if version != TESTED[package]:
            print(f"warning: {message(package, version)} (an untested version; every name prefkit needs is there)",
                  file=sys.stderr)  # fmt: skip
    return names


_names = check()

ChunkedLogProbFunction = _names["trl.kernels.ChunkedLogProbFunction"]
FusedCausalLMOutput = _names["trl.trainer.utils.FusedCausalLMOutput"]
add_fused_lm_head = _names["trl.trainer.utils.add_fused_lm_head"]
GKDConfig = _names["trl.experimental.gkd.GKDConfig"]
GKDTrainer = _names["trl.experimental.gkd.GKDTrainer"]
find_packed_sequence_indices = _names["transformers.masking_utils.find_packed_sequence_indices"]
get_parameter_names = _names["transformers.trainer_pt_utils.get_parameter_names"]


def chunked_logprobs(hidden: Any, head: Any, targets: Any, outputs: tuple[str, ...] = ("log_probs",)) -> tuple:
    """Per-token log-probs of `targets` under `head(hidden)` (and the optional `outputs` fields: entropy,
    log_sum_sq_probs, mean_logits, is_top1), computed in vocabulary tiles without materialising the logits.

    Unscaled logits (temperature 1, no softcap, no logit scale): rlhf/packing.py only packs models without those.
    Returns (log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1), None for fields not asked for."""
    return ChunkedLogProbFunction.apply(
        hidden, head.weight, head.bias, targets, 1.0, LM_HEAD_CHUNK, None, 1.0, outputs
    )


def dpo_trainer_with_hook(prepare: Callable[[Any], None]) -> type:
    """TRL's DPOTrainer that calls `prepare(trainer)` once its models are set up and before its first forward.

    TRL runs the reference pass that precomputes log-probs inside `__init__`, through the private
    `_precompute_ref_logps`; the hook goes there, and after `__init__` for runs that precompute nothing. `prepare`
    may run more than once; it has to be idempotent."""
    from trl import DPOTrainer

    class HookedDPOTrainer(DPOTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            prepare(self)

        def _precompute_ref_logps(self, *args: Any, **kwargs: Any) -> Any:
            prepare(self)
            return super()._precompute_ref_logps(*args, **kwargs)

    return HookedDPOTrainer


def dpo_trainer_without_reference(base: type) -> type:
    """`base` (TRL's DPOTrainer or a subclass) for a reference-free loss (SimPO): built with
    `precompute_ref_log_probs=True` and no `ref_model`, TRL keeps no reference model, and the reference pass it would
    then run inside `__init__` (the private `_precompute_ref_logps`) leaves each dataset as it is. Afterwards the
    trainer says it precomputes nothing, so `evaluate(dataset)` after training does not ask for a reference either.
    (Under FSDP TRL still loads a reference for that pass and frees it after `__init__`.)"""

    class ReferenceFreeDPOTrainer(base):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.precompute_ref_logps = False

        def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
            return dataset

    return ReferenceFreeDPOTrainer


def record_metric(trainer: Any, mode: str, name: str, value: float) -> None:
    """Log `value` under `name` ("train" or "eval" mode) the way TRL's trainers log their own metrics: averaged over
    the logging interval into the trainer's private `_metrics` (present in RewardTrainer and DPOTrainer)."""
    trainer._metrics[mode][name].append(value)
