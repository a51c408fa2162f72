"""`python -m annotate stats --store DIR` (counts as tables) and `python -m annotate compact --store DIR`."""

from __future__ import annotations

import argparse
import numbers
from pathlib import Path

import pandas as pd

from annotate.schema import CHOICES, FLAGS


def store_stats(store: str) -> dict[str, pd.DataFrame | dict]:
    """Counts of a store: totals, votes by choice, by annotator (x choice), by source (appearances, wins, losses)."""
    import pyarrow.compute as pc

    from annotate.store import effective_table, snapshot

    table, info = snapshot(store, live=True)
    cols = ["comparison_id", "prompt_id", "choice", "annotator", "source_a", "source_b", "retracts", "flag"]
    all_votes = table.select(cols).to_pandas()
    votes = effective_table(table.select(cols)).to_pandas()
    n_retractions = int(pc.sum(pc.is_valid(table.column("retracts"))).as_py() or 0)
    totals = {
        "table version": info["version"],
        "records": table.num_rows,
        "not yet sealed": info["unsealed"],
        "standing votes": len(votes),
        "retractions": n_retractions,
        "retracted votes": len(all_votes) - n_retractions - len(votes),
        "prompts": votes["prompt_id"].nunique(),
        "annotators": votes["annotator"].nunique(),
    }
    # Flags (standing ones): broken / offensive / duplicate pairs are kept out of `export`; a lead reviews them.
    totals.update({f"flagged {f.replace('_', ' ')}": int((votes["flag"] == f).sum()) for f in FLAGS})
    by_choice = votes["choice"].value_counts().reindex(list(CHOICES), fill_value=0).rename("votes").to_frame()
    by_annotator = pd.crosstab(votes["annotator"], votes["choice"]).reindex(columns=list(CHOICES), fill_value=0)
    by_annotator.insert(0, "votes", by_annotator.sum(axis=1))
    by_annotator = by_annotator.sort_values("votes", ascending=False)
    return {"totals": totals, "choice": by_choice, "annotator": by_annotator, "source": _by_source(votes)}


def _by_source(votes: pd.DataFrame) -> pd.DataFrame:
    """Per source: comparisons it appeared in, and how they went (won, lost, tie, both_bad, skip)."""
    a = pd.DataFrame({"source": votes["source_a"], "won": votes["choice"] == "a", "lost": votes["choice"] == "b"})
    b = pd.DataFrame({"source": votes["source_b"], "won": votes["choice"] == "b", "lost": votes["choice"] == "a"})
    both = pd.concat([a, b], ignore_index=True)
    choice = pd.concat([votes["choice"], votes["choice"]], ignore_index=True)
    for c in ("tie", "both_bad", "skip"):
        both[c] = choice == c
    both["source"] = both["source"].fillna("").replace("", "(unknown)")
    out = both.groupby("source").agg(
        appearances=("won", "size"), won=("won", "sum"), lost=("lost", "sum"), tie=("tie", "sum"),
        both_bad=("both_bad", "sum"), skip=("skip", "sum"),
    )  # fmt: skip
    decided = (out["won"] + out["lost"]).clip(lower=1)
    out["win rate"] = (out["won"] / decided).round(3)
    return out.sort_values("appearances", ascending=False)


def _rich_table(title: str, df: pd.DataFrame, index_name: str):
    from rich.table import Table

    t = Table(title=title)
    t.add_column(index_name)
    for c in df.columns:
        t.add_column(str(c), justify="right")
    for row in df.itertuples(index=True):  # keeps each column's dtype (iterrows would upcast ints to float)
        t.add_row(*(_fmt(v) for v in row))
    return t


def _fmt(v: object) -> str:
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return f"{v:,}"
    return f"{v:.3g}" if isinstance(v, numbers.Real) else str(v)


def add_stats_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="store directory or fsspec URL")


def main_stats(args: argparse.Namespace) -> int:
    from rich.console import Console

    s = store_stats(args.store)
    console = Console()
    totals = pd.DataFrame({"count": pd.Series(s["totals"])})
    console.print(_rich_table(f"Store {args.store}", totals, "what"))
    console.print(_rich_table("Standing votes by choice", s["choice"], "choice"))
    console.print(_rich_table("By annotator", s["annotator"], "annotator"))
    console.print(_rich_table("By source (model or author)", s["source"], "source"))
    return 0


def add_compact_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, type=Path, help="store directory (local)")
    parser.add_argument("--no-vacuum", action="store_true", help="keep the files a compaction replaced")


def main_compact(args: argparse.Namespace) -> int:
    from annotate.store import ComparisonStore, prepare

    prepare(args.store, create=False)  # a missing folder or one that is not a store: exit 2, nothing created
    s = ComparisonStore(args.store).compact(vacuum=not args.no_vacuum)
    print(
        f"{args.store}: sealed {s['sealed_orphans']} records of dead writers; {s['files_before']} data files -> "
        f"{s['files_after']}; {s['vacuumed']} replaced files deleted; now at version {s['version']}"
    )
    return 0
