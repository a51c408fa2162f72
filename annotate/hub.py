"""The one door to the Hugging Face Hub, and dataset publishing: `python -m annotate push`.

    python -m annotate push --store DIR --repo-id ORG/NAME [--dry-run DIR] [--public]

`publish` builds the exact folder to upload, then sends it with `HfApi.create_repo` and `HfApi.upload_folder`: no
hand-written HTTP. `--dry-run DIR` writes that folder to DIR and stops (no token, no network). Repositories are
private unless `--public`. The token comes from HF_TOKEN or the cached login (`hf auth login`); without one the
command stops before any work (exit 2). A store becomes Parquet shards (comparisons and aggregated preferences) and
a dataset card (annotate.cards) that says where the judgments came from (annotate.provenance): imported data keeps
its origin, its annotator ids as imported and, without --license, its source's licence (HH-RLHF: MIT). Only app
annotators and judges are pseudonymised. A licence that cannot be determined (votes collected in the app, a TRL file)
needs --license: a push without it exits 2; a dry run writes "unknown: set --license" into the card. Models go
through the same door: `python rlhf/train.py push` (rlhf/hub.py) calls `hub_token` and `publish` here.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotate.errors import UsageError
from annotate.schema import SchemaError

if TYPE_CHECKING:
    import pyarrow as pa

    from annotate.audit_types import AuditResult
    from annotate.provenance import Provenance

NO_TOKEN = "no Hugging Face token: set HF_TOKEN or run `hf auth login` (or write the folder only with --dry-run DIR)"
SHARD_ROWS = 100_000  # rows per Parquet shard: small enough for the dataset viewer, few files for big stores


def hub_token(dry_run: str | None) -> str | None:
    """The Hub token, or None for a dry run (which needs none). UsageError without one: call this before any work,
    so a missing token never costs a long export first."""
    if dry_run:
        return None
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise UsageError(NO_TOKEN)
    return token


def _fresh_folder(path: str | Path) -> Path:
    """An empty folder (a dry run must show exactly what would be uploaded, nothing left from before)."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        raise UsageError(f"--dry-run {path}: folder exists and is not empty")
    path.mkdir(parents=True, exist_ok=True)
    return path


def upload(folder: Path, repo_id: str, repo_type: str, *, token: str | None, public: bool, message: str) -> str:
    """create_repo (private unless public; no error if it exists) + upload_folder; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type=repo_type, private=not public, exist_ok=True)
    info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type, commit_message=message)
    return str(getattr(info, "commit_url", info))


def publish(
    build: Callable[[Path], Any], repo_id: str, repo_type: str, dry_run: str | None, token: str | None, public: bool
) -> int:
    """Build the folder (in DIR for a dry run, else a temporary one) and upload it unless dry-running."""
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
    parser.add_argument(
        "--license", default=None,
        help="licence of the judgments, a Hub licence id (default: the source's where every vote was imported from "
        "one with a known licence, e.g. HH-RLHF's mit; otherwise required: a push without it exits 2)",
    )  # fmt: skip
    parser.add_argument("--guidelines", type=Path, help="the annotation guidelines (Markdown) shown to annotators")
    parser.add_argument(
        "--keep-annotator-ids",
        action="store_true",
        help="publish app annotators' login ids instead of stable pseudonyms (imported ids are always kept as given)",
    )
    parser.add_argument("--shard-rows", type=int, default=SHARD_ROWS, help="rows per Parquet shard")


def write_shards(table: pa.Table, folder: Path, name: str, split: str, shard_rows: int) -> list[Path]:
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


def hub_friendly(table: pa.Table) -> pa.Table:
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


def _run_audit(table: pa.Table, store: str) -> tuple[AuditResult | None, str]:
    """annotate.audit's figures when that module (and everything it needs, e.g. scipy) is importable, with
    preferred vs verified where the store keeps pools with verifiers (annotate.pool.read_store_pools)."""
    try:
        from annotate.audit import run_audit
    except ImportError as e:
        return None, f"annotate.audit is not available ({e})"
    from annotate.pool import pool_verifiers, read_store_pools

    pools = read_store_pools(store)
    return run_audit(table, n_boot=200, verifiers=pool_verifiers(pools) if pools is not None else None), ""


def _pseudonymised(votes: pa.Table, names: list[str], kept: Iterable[str] = ()) -> pa.Table:
    """Login ids (names or e-mails) replaced by stable pseudonyms: annotator-01, ... in the sorted order of `names`
    (the standing votes' app annotators); `kept` (imported ids: the source's attribution, annotate.provenance) stay
    as they are; anyone else (only retracted votes: never in a published figure) is hidden.
    AI judges ("judge:<model>") become judge:model-01, ...: still judges to the card's audit (its judge bias card),
    but not named, since <model> may be a local path with a user's name in it."""
    import pyarrow as pa

    from annotate.judge_votes import is_judge

    humans, judges = [n for n in names if not is_judge(n)], [n for n in names if is_judge(n)]
    alias = {n: n for n in kept}
    alias |= {n: f"annotator-{i + 1:02d}" for i, n in enumerate(humans)}
    alias |= {n: f"judge:model-{i + 1:02d}" for i, n in enumerate(judges)}
    col = pa.array([alias.get(a, "annotator-retracted") for a in votes.column("annotator").to_pylist()], pa.string())
    return votes.set_column(votes.schema.get_field_index("annotator"), "annotator", col)


def _counts(raw: pa.Table, votes: pa.Table, prefs: pa.Table, agg_counts: dict, version: int) -> dict[str, Any]:
    """The card's Counts table: the store's records, its standing votes and what aggregation made of them."""
    import pyarrow.compute as pc

    return {
        "store table version": version,
        "records in the store": raw.num_rows,
        "standing votes (comparisons)": votes.num_rows,
        "retracted votes and retractions": raw.num_rows - votes.num_rows,
        "prompts": len(set(votes.column("prompt_id").to_pylist())),
        "annotators": len(set(votes.column("annotator").to_pylist())),
        **{f"choice = {c['values']}": c["counts"] for c in pc.value_counts(votes.column("choice")).to_pylist()},
        "preference pairs (aggregated)": prefs.num_rows,
        **{f"aggregation: {k}": v for k, v in agg_counts.items()},
    }


def _card_data(args: argparse.Namespace, rows: int, licence: str | None):
    """The dataset card's YAML metadata: license ("unknown", the Hub's own word, when undetermined), tags, size, and
    the two configs the Hub's viewer offers."""
    from huggingface_hub import DatasetCardData

    from annotate.cards import size_category

    return DatasetCardData(
        license=licence or "unknown",
        task_categories=["text-generation"],
        tags=["rlhf", "dpo", "human-feedback", "preference", "prefkit"],
        size_categories=[size_category(rows)],
        pretty_name=args.repo_id.split("/")[-1],
        configs=[
            {"config_name": c, "data_files": [{"split": "train", "path": f"data/{c}/train-*.parquet"}], "default": d}
            for c, d in (("preferences", True), ("comparisons", False))
        ],
    )


def _licence(args: argparse.Namespace, prov: Provenance) -> tuple[str | None, str]:
    """The release's licence and why (annotate.provenance). Undetermined: a real push refuses (exit 2, naming
    --license); a dry run writes the card with "unknown: set --license" and says so."""
    from annotate.provenance import UNKNOWN_LICENSE

    licence, why = prov.license(args.license)
    if licence is None:
        if not args.dry_run:
            raise UsageError(f"--license: the licence of these judgments is unknown ({why}): set --license, e.g. "
                             "--license cc-by-4.0 for judgments you collected")  # fmt: skip
        print(f"note: the card's licence is '{UNKNOWN_LICENSE}' ({why}); a push needs --license", file=sys.stderr)
    for o in prov.conflicts(licence):  # the publisher's call, but never a silent one: on stderr and in the card
        clash = f"the {o.votes:,} votes {o.label} are {o.license} at their source"
        print(f"note: --license {licence}, but {clash}", file=sys.stderr)
        why += f"; {clash}"
    return licence, why


def build_dataset_folder(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Parquet shards (comparisons + aggregated preferences) and README.md for a store; returns the counts."""
    import pyarrow.compute as pc

    from annotate.annotator_status import trainable_votes
    from annotate.cards import dataset_card
    from annotate.export import aggregate, usable_votes
    from annotate.provenance import Provenance, origin_of_name
    from annotate.store import effective_table, snapshot

    raw, info = snapshot(str(args.store))  # a sealed version, named in the card: the published votes can be re-read
    votes = effective_table(raw).drop_columns(["retracts"])  # standing votes: retracts is null in every row
    if votes.num_rows == 0:
        raise SchemaError(f"{args.store}: no standing comparisons to publish")
    prov = Provenance.of(votes)
    licence, licence_why = _licence(args, prov)  # before any work: a push without a licence stops here
    kept = prov.kept_names()
    audited = raw
    if not args.keep_annotator_ids:  # login ids may be names or e-mails: publish stable pseudonyms
        names = prov.private_names()
        votes, audited = _pseudonymised(votes, names, kept), _pseudonymised(raw, names, kept)  # the audit too
    # As export does: votes of annotators the app's checks hold (annotate.qualify) do not train anyone.
    trainable, _ = trainable_votes(usable_votes(raw), args.store)
    prefs, agg_counts = aggregate(trainable)
    votes = hub_friendly(votes)
    write_shards(votes, folder, "comparisons", "train", args.shard_rows)
    write_shards(prefs, folder, "preferences", "train", args.shard_rows)
    counts = _counts(raw, votes, prefs, agg_counts, info["version"])
    per_annotator = sorted(pc.value_counts(votes.column("annotator")).to_pylist(), key=lambda r: r["values"])
    audit, missing = _run_audit(audited, str(args.store))
    card = dataset_card(
        _card_data(args, votes.num_rows, licence),
        repo_id=args.repo_id,
        counts=counts,
        provenance=prov,
        licence=(licence, licence_why),
        annotators={r["values"]: (origin_of_name(r["values"], kept), r["counts"]) for r in per_annotator},
        pseudonymised=not args.keep_annotator_ids,
        schemas={"preferences": prefs.schema, "comparisons": votes.schema},
        audit=audit,
        audit_missing=missing,
        guidelines=args.guidelines.read_text() if args.guidelines else None,
    )
    (folder / "README.md").write_text(card)
    return counts


def main(args: argparse.Namespace) -> int:
    """`python -m annotate push`: publish a comparison store as a dataset."""
    token = hub_token(args.dry_run)  # before any work: a missing token must not cost a long export
    if args.guidelines and not args.guidelines.exists():
        raise FileNotFoundError(f"--guidelines {args.guidelines}: no such file")
    return publish(
        lambda folder: build_dataset_folder(args, folder), args.repo_id, "dataset", args.dry_run, token, args.public
    )
