"""What every `rlhf/train.py` command checks before it loads a model: one place for the mistakes a command line or a
recipe can hold, so each ends within seconds as one `error: ...` line naming the flag, file or field (a UsageError,
exit 2), not as a traceback after minutes of loading. In order, cheapest first:

    required   the flags the command cannot run without
    inputs     --data, --eval-data, --prompts, ...: they exist, are readable and not empty, in a format the command
               reads; a prompts file is read (prompts are small) and split as the run will split it
    models     --model, --reward-model, --policy, ...: a model folder, the bundled default, or a Hub id in the local
               cache or on the Hub (rlhf.models.check_model, which loads nothing); a multi-head reward model's heads
               against --objective
    outputs    --output-dir is not a file
    device     --device cuda needs a visible GPU
    TRL        the command's TRL config is built (rlhf.common.trl_args), so TRL's own refusals (a generation batch not
               divisible by --num-generations, say) come now, not after the models loaded

Nothing heavy is imported at module level: every command module imports this one, and --help stays instant.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from annotate.errors import UsageError

# distill's --teacher is also its --model: the more specific name is checked (and named) first
MODEL_FLAGS = ("teacher", "student", "policy", "model", "reference", "reward_model")
PAIR_SUFFIXES = (".parquet", ".jsonl", ".jsonl.gz", ".json")  # what rlhf.data.load_preferences reads, or a store
NO_MODEL = "none"  # grpo's --reward-model none: verifiers alone


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def preflight(
    cfg: Any,
    *,
    data: str = "pairs",
    split: bool = False,
    required: Mapping[str, str] | None = None,
    none_ok: Collection[str] = (),
    trl_config: Callable[[Any], Any] | None = None,
) -> None:
    """Check `cfg` as the command will use it. `data`: what --data holds, "pairs" (an export or a store) or
    "prompts" (an export, a pool or a prompts file); `split`: the command splits those prompts by prompt (ppo, rloo,
    grpo). `required`: flag name -> what to pass. `none_ok`: model flags that take 'none'. `trl_config`: builds the
    command's TRL config from cfg."""
    for name, hint in (required or {}).items():
        if not getattr(cfg, name, None):
            raise UsageError(f"{flag(name)} is required ({hint})")
    check_inputs(cfg, data, split)
    check_models(cfg, none_ok)
    out = Path(getattr(cfg, "output_dir", "") or ".")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {out}: a file is in the way")
    if getattr(cfg, "device", None) == "cuda":
        from rlhf.common import use_cuda

        use_cuda(cfg)
    if trl_config is not None:
        check_trl_config(cfg, trl_config)


# -- inputs ----------------------------------------------------------------------------------------------------------
def check_inputs(cfg: Any, data: str, split: bool = False) -> None:
    """--data (and --eval-data) as `data` says, then the prompts and data files of the commands that have them."""
    for name in ("data", "eval_data"):
        if getattr(cfg, name, None):
            if data == "pairs":
                check_pairs(name, str(getattr(cfg, name)))
            else:
                check_prompts(name, str(getattr(cfg, name)), read=not split)  # check_split reads them
    if split and getattr(cfg, "data", None):
        check_split(cfg)
    if getattr(cfg, "prompts", None):
        check_prompts("prompts", cfg.prompts)
    if getattr(cfg, "trim_vocab_data", None):
        check_pairs("trim_vocab_data", cfg.trim_vocab_data)
    for source in str(getattr(cfg, "verifiers", None) or "").split(","):
        if source.strip():
            _exists("verifiers", source.strip())


def _exists(name: str, path: str) -> Path:
    """`path` as a Path, refused unless it exists and can be read."""
    import os

    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"{flag(name)} {path}: no such file or folder")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{flag(name)} {path}: not readable")
    return p


def check_pairs(name: str, path: str) -> None:
    """Preference pairs: a store (`DIR` or `DIR@VERSION`), or an export file with at least one pair."""
    from annotate.store import is_store, parse_store_spec

    root, version = parse_store_spec(path)
    p = _exists(name, root if version is not None else path)
    if p.is_dir():
        if not is_store(p):
            raise UsageError(f"{flag(name)} {path}: a folder, but not a comparison store")
        return
    if version is not None or not p.name.endswith(PAIR_SUFFIXES):
        raise UsageError(f"{flag(name)} {path}: expected an export ({', '.join(PAIR_SUFFIXES)}) or a store folder")
    if _rows(name, p) == 0:
        raise UsageError(f"{flag(name)} {path}: no preference pairs in it (an empty export)")


def check_prompts(name: str, path: str, read: bool = True) -> None:
    """A prompts source (an export, a pool, a prompts file): it exists and is not empty; with `read`, it is read as
    the run will read it (prompts are small), so a bad line is a SchemaError naming it now."""
    p = _exists(name, path)
    if p.is_dir():
        raise UsageError(f"{flag(name)} {path}: a folder; expected an export, a pool or a prompts file")
    if _rows(name, p) == 0:
        raise UsageError(f"{flag(name)} {path}: no prompts in it (an empty file)")
    if read:
        from rlhf.data import load_prompts

        load_prompts(p)


def check_split(cfg: Any) -> None:
    """--data's prompts, read and split into training and held-out prompts as ppo, rloo and grpo split them (by
    prompt; --eval-data or an export's X-test.parquet instead when there is one): both sides must hold some."""
    from annotate.schema import SchemaError
    from rlhf.data import heldout_path, load_prompts, split_prompts

    try:
        split_prompts(load_prompts(cfg.data), heldout_path(cfg.data, cfg.eval_data), cfg.test_fraction, cfg.seed)
    except ValueError as e:
        if isinstance(e, SchemaError | UsageError):
            raise
        raise UsageError(f"--data {cfg.data}: {e}") from None


def _rows(name: str, path: Path) -> int:
    """Rows of a Parquet file (its footer) or records of a JSONL file (its first non-blank line is enough)."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_metadata(path).num_rows
        except (pa.ArrowInvalid, OSError) as e:
            raise UsageError(f"{flag(name)} {path}: not a Parquet file ({e})") from None
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return next((1 for line in f if line.strip()), 0)
    except (OSError, UnicodeError) as e:
        raise UsageError(f"{flag(name)} {path}: cannot be read as text ({type(e).__name__})") from None


# -- models ----------------------------------------------------------------------------------------------------------
def check_models(cfg: Any, none_ok: Collection[str] = ()) -> None:
    """Every model flag's value can be loaded (each value checked once); a local reward model's heads take
    --objective."""
    from rlhf.models import check_model

    checked = set()
    for name in MODEL_FLAGS:
        value = getattr(cfg, name, None)
        if value is None or (name in none_ok and value == NO_MODEL):
            continue
        if value not in checked:
            check_model(value, flag(name))
            checked.add(value)
        objective = getattr(cfg, "objective", None)
        if name == "reward_model" and objective is not None and Path(value).is_dir():
            from rlhf.reward_heads import heads_of, parse_objective

            info = heads_of(value, objective, value)  # a one-head model has nothing to weigh: UsageError
            if info:
                parse_objective(objective, info["heads"], f"{value}'s heads")


# -- TRL -------------------------------------------------------------------------------------------------------------
# TRL fields no flag of ours is named after, and the flags that set them (rlhf.common.trl_args).
TRL_FIELD_FLAGS = {
    "generation_batch_size": "--per-device-train-batch-size x --gradient-accumulation-steps x processes",
    "max_completion_length": "--response-length",
}


def check_trl_config(cfg: Any, build: Callable[[Any], Any]) -> None:
    """Build the TRL config now: its refusals (ValueError) become one line naming the flags in play."""
    import re

    from annotate.errors import require_extra
    from annotate.schema import SchemaError

    for module in ("torch", "trl"):
        require_extra(module, "rlhf/train.py")
    try:
        build(cfg)
    except ValueError as e:
        if isinstance(e, SchemaError | UsageError):
            raise
        text = " ".join(str(e).split())
        words = dict.fromkeys(re.findall(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+", text))  # TRL names its fields
        ours = [flag(w) for w in words if hasattr(cfg, w) and w != "trl_overrides"]
        # a TRL option whose value the message quotes ("nonsense is not a valid OptimizerNames": --optim)
        given = getattr(cfg, "trl_overrides", {}).items()
        ours += [flag(k) for k, v in given if k not in words and re.search(rf"\b{re.escape(str(v))}\b", text)]
        ours += [f"{w} = {TRL_FIELD_FLAGS[w]}" for w in words if w in TRL_FIELD_FLAGS and not hasattr(cfg, w)]
        hint = f" (flags: {'; '.join(ours)})" if ours else ""
        what = str(getattr(cfg, "trl_config_class", "TRL's config")).rpartition(".")[2]
        raise UsageError(f"{what} refuses these settings: {text}{hint}") from None


def trl_config_of(cfg: Any) -> Callable[[Any], Any] | None:
    """The generic TRL config of a command config that names a TRL class: rlhf.common.trl_args over its flags and
    TRL options, without the command's own extra keys (a command with its own builder passes that instead)."""
    if getattr(cfg, "trl_config_class", None) is None:
        return None

    def build(cfg: Any) -> Any:
        from rlhf.common import trl_args
        from rlhf.config import trl_config_class

        return trl_args(cfg, trl_config_class(type(cfg)))

    return build
