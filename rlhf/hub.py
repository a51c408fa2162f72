"""`python rlhf/train.py push`: publish a trained model, through annotate.hub's door to the Hub.

    python rlhf/train.py push --model-dir DIR --repo-id ORG/NAME [--dry-run DIR] [--public]

The folder holds the weights, tokenizer and run records (config.yaml, eval.json, reports) of a run directory and a
README.md model card written by rlhf.cards, the same writer that wrote the run's own card when it finished. The
token, `--dry-run DIR` (write the folder, no token, no network) and the upload are annotate.hub's, as for datasets.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from annotate.errors import UsageError
from annotate.hub import hub_token, publish

# Files of a run directory worth publishing (weights, tokenizer, chat template, run records); not trainer state.
MODEL_SUFFIXES = {".safetensors", ".json", ".jinja", ".txt", ".model", ".yaml", ".jsonl", ".png"}


def model_parser() -> argparse.ArgumentParser:
    from rlhf.config import OneLineParser  # a mistake is one line, as for every rlhf/train.py command

    p = OneLineParser(prog="python rlhf/train.py push", description="publish a trained model to the Hub")
    p.add_argument("--model-dir", required=True, type=Path, help="a run directory (weights, tokenizer, config.yaml)")
    p.add_argument("--repo-id", required=True, help="model repository, e.g. my-org/my-policy")
    p.add_argument("--dry-run", metavar="DIR", help="write the folder that would be uploaded to DIR; no upload")
    p.add_argument("--public", action="store_true", help="make the repository public (default: private)")
    p.add_argument("--data-repo", help="Hub dataset the model was trained on (e.g. the `annotate push` repo)")
    p.add_argument("--data-revision", help="revision (commit or tag) of --data-repo used for training")
    p.add_argument("--license", default="apache-2.0", help="license of the weights (default: apache-2.0)")
    return p


def build_model_folder(args: argparse.Namespace, folder: Path) -> None:
    """Weights, tokenizer, run records (config.yaml, eval.json, reports) and a README.md model card."""
    from rlhf.cards import Release, model_card, read_run

    src = args.model_dir
    for p in sorted(src.iterdir()):
        if p.is_file() and p.suffix in MODEL_SUFFIXES:
            shutil.copy2(p, folder / p.name)
    release = Release(args.repo_id, args.license, args.data_repo, args.data_revision)
    (folder / "README.md").write_text(model_card(read_run(src), release))


def main_push(argv: list[str]) -> int:
    """`python rlhf/train.py push`: publish a trained model with its model card. Errors (no token, not a model
    directory) are UsageErrors, which rlhf/train.py reports as one line with exit code 2."""
    args = model_parser().parse_args(argv)
    token = hub_token(args.dry_run)  # before any work, as for datasets
    d = args.model_dir
    if not (d / "config.json").exists() or not any(d.glob("*.safetensors")):
        raise UsageError(f"--model-dir {d}: not a model directory (needs config.json and *.safetensors)")
    return publish(lambda f: build_model_folder(args, f), args.repo_id, "model", args.dry_run, token, args.public)
