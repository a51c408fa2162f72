"""The one module that talks to the Hugging Face Hub: publish a comparison store (dataset) or a trained model.

    python -m annotate push --store DIR --repo-id ORG/NAME [--dry-run DIR] [--public]
    python rlhf/train.py push --model-dir DIR --repo-id ORG/NAME [--dry-run DIR] [--public]

Both build the exact folder to upload (Parquet shards + dataset card, or weights + tokenizer + run records + model
card), then send it with `HfApi.create_repo` and `HfApi.upload_folder`: no hand-written HTTP. `--dry-run DIR`
writes that folder to DIR and stops (no token, no network). Repositories are private unless `--public`. The token
comes from HF_TOKEN or the cached login (`hf auth login`); without one the command stops before any work (exit 2).

Entry points: `add_arguments`/`main` serve the annotate CLI (dataset), `main_push(argv)` serves rlhf/train.py (model).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotate.schema import SchemaError

if TYPE_CHECKING:
    from annotate.audit_types import AuditResult

NO_TOKEN = (
    "error: no Hugging Face token: set HF_TOKEN or run `hf auth login` (or write the folder only with --dry-run DIR)"
)
SHARD_ROWS = 100_000  # rows per Parquet shard: small enough for the dataset viewer, few files for big stores
# Files of a run directory worth publishing (weights, tokenizer, chat template, run records); not trainer state.
MODEL_SUFFIXES = {".safetensors", ".json", ".jinja", ".txt", ".model", ".yaml", ".jsonl", ".png"}


def _token_or_exit(dry_run: str | None) -> tuple[str | None, int]:
    """(token, 0), or (None, 2) after printing why; a dry run needs no token."""
    if dry_run:
        return None, 0
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        print(NO_TOKEN, file=sys.stderr)
        return None, 2
    return token, 0


def _fresh_folder(path: str | Path) -> Path:
    """An empty folder (a dry run must show exactly what would be uploaded, nothing left from before)."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise SchemaError(f"--dry-run {path}: folder exists and is not empty")
    path.mkdir(parents=True, exist_ok=True)
    return path


def upload(folder: Path, repo_id: str, repo_type: str, *, token: str, public: bool, message: str) -> str:
    """create_repo (private unless public; no error if it exists) + upload_folder; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=not public, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type, commit_message=message)
    return str(getattr(info, "commit_url", info))


def _publish(build, repo_id: str, repo_type: str, dry_run: str | None, token: str | None, public: bool) -> int:
    """Build the folder (in DIR for a dry run, else a temp dir) and upload it unless dry-running."""
    import tempfile

    if dry_run:
        folder = _fresh_folder(dry_run)
        build(folder)
        print(f"[push] dry run: wrote {sum(1 for p in folder.rglob('*') if p.is_file())} files to {folder}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp))
        url = upload(Path(tmp), repo_id, repo_type, token=token, public=public, message="Upload with prefkit")
    print(f"[push] uploaded to {repo_id} ({'public' if public else 'private'}): {url}")
    return 0


# ---------------------------------------------------------------- datasets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="comparison store directory (or fsspec URL)")
    parser.add_argument("--repo-id", required=True, help="dataset repository, e.g. my-org/my-prefs")
    parser.add_argument("--dry-run", metavar="DIR", help="write the folder that would be uploaded to DIR; no upload")
    parser.add_argument("--public", action="store_true", help="make the repository public (default: private)")
    parser.add_argument("--license", default="cc-by-4.0", help="license of the judgments (default: cc-by-4.0)")
    parser.add_argument("--guidelines", type=Path, help="the annotation guidelines (Markdown) shown to annotators")
    parser.add_argument(
        "--keep-annotator-ids", action="store_true", help="publish login ids instead of stable pseudonyms"
    )
    parser.add_argument("--shard-rows", type=int, default=SHARD_ROWS, help="rows per Parquet shard")


def write_shards(table, folder: Path, name: str, split: str, shard_rows: int) -> list[Path]:
    """`{folder}/data/{name}/{split}-0000i-of-0000n.parquet`, the Hub's shard naming."""
    import pyarrow.parquet as pq

    n = max(1, -(-table.num_rows // shard_rows))
    out = folder / "data" / name
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = out / f"{split}-{i:05d}-of-{n:05d}.parquet"
        pq.write_table(table.slice(i * shard_rows, shard_rows), path)
        paths.append(path)
    return paths


def hub_friendly(table):
    """Map columns (criteria) become structs with one field per key seen: `datasets` cannot load Arrow maps."""
    import pyarrow as pa

    for i, f in enumerate(table.schema):
        if pa.types.is_map(f.type):
            rows = [dict(m) if m is not None else None for m in table.column(i).to_pylist()]
            keys = sorted({k for r in rows if r for k in r})
            typ = pa.struct([(k, f.type.item_type) for k in keys]) if keys else pa.string()
            col = pa.array([{k: r.get(k) for k in keys} if r is not None and keys else None for r in rows], typ)
            table = table.set_column(i, f.name, col)
    return table


def _run_audit(table) -> tuple[AuditResult | None, str]:
    """annotate.audit's figures when that module (and everything it needs, e.g. scipy) is importable."""
    try:
        from annotate.audit import run_audit
    except ImportError as e:
        return None, f"annotate.audit is not available ({e})"
    return run_audit(table, n_boot=200), ""


def build_dataset_folder(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Parquet shards (comparisons + aggregated preferences) and README.md for a store; returns the counts."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from huggingface_hub import DatasetCardData

    from annotate.export import aggregate, usable_votes
    from annotate.store import effective_table, snapshot
    from rlhf.cards import dataset_card, size_category

    raw, info = snapshot(str(args.store))  # a sealed version, named in the card: the published votes can be re-read
    votes = effective_table(raw).drop_columns(["retracts"])  # standing votes: retracts is null in every row
    if votes.num_rows == 0:
        raise SchemaError(f"{args.store}: no standing comparisons to publish")
    names = sorted(set(votes.column("annotator").to_pylist()))
    if not args.keep_annotator_ids:  # login ids may be names or e-mails: publish stable pseudonyms
        alias = {n: f"annotator-{i + 1:02d}" for i, n in enumerate(names)}
        col = pa.array([alias[a] for a in votes.column("annotator").to_pylist()], pa.string())
        votes = votes.set_column(votes.schema.get_field_index("annotator"), "annotator", col)
    prefs, agg_counts = aggregate(usable_votes(raw))
    votes = hub_friendly(votes)
    write_shards(votes, folder, "comparisons", "train", args.shard_rows)
    write_shards(prefs, folder, "preferences", "train", args.shard_rows)
    per_annotator = pc.value_counts(votes.column("annotator")).to_pylist()
    counts = {
        "store table version": info["version"],
        "records in the store": raw.num_rows,
        "standing votes (comparisons)": votes.num_rows,
        "retracted votes and retractions": raw.num_rows - votes.num_rows,
        "prompts": len(set(votes.column("prompt_id").to_pylist())),
        "annotators": len(names),
        **{f"choice = {c['values']}": c["counts"] for c in pc.value_counts(votes.column("choice")).to_pylist()},
        "preference pairs (aggregated)": prefs.num_rows,
        **{f"aggregation: {k}": v for k, v in agg_counts.items()},
    }
    audit, missing = _run_audit(raw)
    data = DatasetCardData(
        license=args.license,
        task_categories=["text-generation"],
        tags=["rlhf", "dpo", "human-feedback", "preference", "prefkit"],
        size_categories=[size_category(votes.num_rows)],
        pretty_name=args.repo_id.split("/")[-1],
        configs=[
            {"config_name": c, "data_files": [{"split": "train", "path": f"data/{c}/train-*.parquet"}], "default": d}
            for c, d in (("preferences", True), ("comparisons", False))
        ],
    )
    guidelines = args.guidelines.read_text() if args.guidelines else None
    card = dataset_card(
        data,
        repo_id=args.repo_id,
        counts=counts,
        annotators={r["values"]: r["counts"] for r in sorted(per_annotator, key=lambda r: r["values"])},
        pseudonymised=not args.keep_annotator_ids,
        schemas={"preferences": prefs.schema, "comparisons": votes.schema},
        audit=audit,
        audit_missing=missing,
        guidelines=guidelines,
    )
    (folder / "README.md").write_text(card)
    return counts


def main(args: argparse.Namespace) -> int:
    """`python -m annotate push`: publish a comparison store as a dataset."""
    token, rc = _token_or_exit(args.dry_run)  # before any work: a missing token must not cost a long export
    if rc:
        return rc
    if args.guidelines and not args.guidelines.exists():
        raise FileNotFoundError(f"--guidelines {args.guidelines}: no such file")
    return _publish(
        lambda folder: build_dataset_folder(args, folder), args.repo_id, "dataset", args.dry_run, token, args.public
    )


# ---------------------------------------------------------------- models


def model_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python rlhf/train.py push", description="publish a trained model to the Hub")
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
    from huggingface_hub import ModelCardData

    from rlhf.cards import base_model_id, model_card, read_run

    src = args.model_dir
    files = [p for p in sorted(src.iterdir()) if p.is_file() and p.suffix in MODEL_SUFFIXES]
    for p in files:
        shutil.copy2(p, folder / p.name)
    run = read_run(src)
    data = ModelCardData(
        base_model=base_model_id(run["config"].get("model")),
        library_name="transformers",
        pipeline_tag="text-generation",
        license=args.license,
        tags=["prefkit", "trl"] + ([run["command"]] if run["command"] else []),
        datasets=[args.data_repo] if args.data_repo else None,
    )
    card = model_card(data, repo_id=args.repo_id, run=run, data_repo=args.data_repo, data_revision=args.data_revision)
    (folder / "README.md").write_text(card)


def main_push(argv: list[str]) -> int:
    """`python rlhf/train.py push`: publish a trained model with its model card."""
    args = model_parser().parse_args(argv)
    token, rc = _token_or_exit(args.dry_run)
    if rc:
        return rc
    d = args.model_dir
    if not (d / "config.json").exists() or not any(d.glob("*.safetensors")):
        print(f"error: {d}: not a model directory (needs config.json and *.safetensors)", file=sys.stderr)
        return 2
    try:
        return _publish(lambda f: build_model_folder(args, f), args.repo_id, "model", args.dry_run, token, args.public)
    except SchemaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
