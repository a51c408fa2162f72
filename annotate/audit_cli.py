"""`python -m annotate audit --store DIR [--report report.html] [--json out.json] [--pool POOL]`.

Prints the plain-language findings; writes the HTML report and/or the JSON with every number (the versioned form
of annotate.audit_types.AuditResult, read back with annotate.audit_report.read_json). Gold pairs (responses with
a numeric `gold_score` in meta) and verifiers (`meta.verifier`, for preferred vs verified) come from `--pool`, or
from the pools kept in the store (annotate.pool.read_store_pools: imported pools, TRL imports' gold answers) when
no --pool is given.

The findings include annotator reliability under a Dawid-Skene model (annotate.audit_reliability; an annotator whose
reliability CI lies wholly below --reliability-threshold is called unreliable) and, when AI judges voted (annotator
"judge:<model>", written by the judge command), the judge bias card (annotate.audit_judge).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="comparison store: a directory or an fsspec URL")
    parser.add_argument("--report", type=Path, default=None, help="write a self-contained HTML report here")
    parser.add_argument("--json", type=Path, default=None, help="write every figure as JSON here")
    parser.add_argument(
        "--pool",
        type=Path,
        default=None,
        help="candidate pool whose meta.gold_score marks gold pairs and meta.verifier checkable prompts "
        "(default: the pools kept in the store)",
    )
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for confidence intervals")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument(
        "--length-unit", choices=("chars", "words"), default="chars", help="unit of response length for length bias"
    )
    parser.add_argument(
        "--reliability-threshold",
        type=float,
        default=None,  # None: annotate.audit_reliability's default, read there (imported only when the audit runs)
        help="call an annotator unreliable when their Dawid-Skene reliability's 95%% CI lies wholly below this "
        "(default 0.6)",
    )


def _from_pool(pool: Path | None, store: str) -> tuple[dict, dict]:
    """(gold pairs, verifiers) of `--pool`, or of the pools imported into the store when it is not given."""
    from annotate.pool import gold_pairs, pool_verifiers, read_pool, read_store_pools

    table = read_pool(pool) if pool is not None else read_store_pools(store)
    return ({}, {}) if table is None else (gold_pairs(table), pool_verifiers(table))


def main(args: argparse.Namespace) -> int:
    from annotate.annotator_status import annotator_status, summary_line
    from annotate.audit import run_audit
    from annotate.audit_reliability import RELIABILITY_THRESHOLD
    from annotate.audit_report import findings, write_html, write_json
    from annotate.audit_types import StoreRef
    from annotate.errors import UsageError
    from annotate.schema import SchemaError
    from annotate.store import parse_store_spec, snapshot

    if args.n_boot < 0:
        raise UsageError(f"--n-boot: must be >= 0, got {args.n_boot}")
    threshold = RELIABILITY_THRESHOLD if args.reliability_threshold is None else args.reliability_threshold
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--reliability-threshold: must be within [0, 1], got {threshold}")
    table, info = snapshot(str(args.store))  # a sealed version: the audit can be re-run on exactly these votes
    print(f"store {info['store']}@{info['version']}: {info['rows']} records", file=sys.stderr)
    if info["unsealed"]:
        print(f"note: {info['unsealed']} newer votes of a running app are not sealed yet and not included",
              file=sys.stderr)  # fmt: skip
    if table.num_rows == 0:
        raise SchemaError(f"{args.store}: the store holds no comparisons to audit")
    gold, verifiers = _from_pool(args.pool, str(args.store))
    audit = run_audit(table, gold, n_boot=args.n_boot, seed=args.seed, length_unit=args.length_unit,
                      verifiers=verifiers, reliability_threshold=threshold)  # fmt: skip
    audit = dataclasses.replace(audit, store=StoreRef(store=info["store"], version=info["version"], rows=info["rows"]))
    for line in findings(audit):
        print(f"- {line}")
    if held := summary_line(annotator_status(parse_store_spec(str(args.store))[0])):  # the app's checks' marks
        print(f"- {held.capitalize()}.")
    if args.report:
        print(f"report: {write_html(audit, args.report)}")
    if args.json:
        print(f"json: {write_json(audit, args.json)}")
    return 0
