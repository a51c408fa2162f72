"""Candidate pools: prompts with several candidate responses each, read from JSONL, CSV or Parquet.

A pool row is (prompt_id, prompt, response_id, response, source, meta); see annotate.schema.POOL_SCHEMA.
`prompt` may be a plain string (one user turn) or a list of {role, content} messages; in CSV it is either
plain text or a JSON list. `meta` (a JSON object) may hold `verifier`, a machine check of answers to the prompt
(annotate.verifiers), validated on load; a prompt's rows carry the same one or none. Every error names the
file, the physical line (or Parquet row) and the field: files are read with annotate.readers, the one reader of
each file kind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

# The readers live in annotate.readers (one per file kind); importable from here too, as they always were.
from annotate.readers import (  # noqa: F401
    check_surrogates,
    is_jsonl,
    iter_csv,
    iter_jsonl,
    iter_lines,
    iter_parquet,
    parse_json,
)
from annotate.schema import SchemaError, as_messages, check_pool_row, pool_table, prompt_id_for
from annotate.verifiers import validate as validate_verifier


def _rows(path: Path) -> Iterator[tuple[int, dict]]:
    if path.suffix == ".parquet":
        yield from iter_parquet(path)
    elif path.suffix == ".csv":
        for n, row in iter_csv(path):
            prompt = row.get("prompt") or ""
            if prompt.lstrip().startswith("["):
                try:
                    value = json.loads(prompt)
                except (json.JSONDecodeError, RecursionError):
                    pass  # plain text that happens to start with '[' (the schema checks it as text)
                else:
                    check_surrogates(prompt, value, f"{path}: line {n}", "prompt")
                    row["prompt"] = value
            yield n, row
    elif is_jsonl(path):
        yield from iter_jsonl(path)
    else:
        raise SchemaError(f"{path}: unknown pool format (use .jsonl, .jsonl.gz, .csv or .parquet)")


def read_pool(path: str | Path, *, allow_empty: bool = False) -> pa.Table:
    """Read and validate a candidate pool. Raises SchemaError naming file, line/row and field; a pool without rows
    is an error ("no records") unless `allow_empty`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such pool file")
    unit = "row" if path.suffix == ".parquet" else "line"
    rows, seen = [], set()
    verifiers: dict[str, tuple[dict, int]] = {}  # prompt_id -> (its verifier, the line that first gave it)
    for n, raw in _rows(path):
        try:
            row = check_pool_row(raw)
        except SchemaError as e:
            raise SchemaError(f"{path}: {unit} {n}: {e}") from None
        except RecursionError:  # the only recursive step is parsing `meta`
            raise SchemaError(f"{path}: {unit} {n}: field 'meta': JSON nested too deeply to read") from None
        _check_verifier(row, f"{path}: {unit} {n}", verifiers, unit, n)
        key = (row["prompt_id"], row["response_id"])
        if key in seen:
            raise SchemaError(f"{path}: {unit} {n}: field 'response_id': duplicate {key[1]!r} for prompt {key[0]!r}")
        seen.add(key)
        rows.append(row)
    if not rows and not allow_empty:
        raise SchemaError(f"{path}: no records (the pool is empty)")
    return pool_table(rows)


def _check_verifier(row: dict, where: str, verifiers: dict[str, tuple[dict, int]], unit: str, n: int) -> None:
    """Validate the row's `meta.verifier`, if any. A verifier checks answers to the prompt, not to one candidate:
    rows of one prompt may leave it out, but two different ones for the same prompt are refused (which would a
    reward use?)."""
    meta = json.loads(row["meta"])
    if not isinstance(meta, dict) or "verifier" not in meta:
        return
    spec = meta["verifier"]
    validate_verifier(spec, where)
    first = verifiers.setdefault(row["prompt_id"], (spec, n))
    if first[0] != spec:
        why = f"differs from the verifier on {unit} {first[1]} for prompt {row['prompt_id']!r}"
        raise SchemaError(f"{where}: field 'meta.verifier': {why}")


def pool_verifiers(pool: pa.Table) -> dict[str, dict]:
    """prompt_id -> verifier spec (annotate.verifiers) for the prompts of a pool that carry one in `meta.verifier`.
    A pool from read_pool has them validated and consistent per prompt; the first row's is taken."""
    out: dict[str, dict] = {}
    for row in pool.select(["prompt_id", "meta"]).to_pylist():
        try:
            meta = json.loads(row["meta"] or "{}")
        except json.JSONDecodeError:
            continue
        if isinstance(meta, dict) and isinstance(meta.get("verifier"), dict):
            out.setdefault(row["prompt_id"], meta["verifier"])
    return out


def verifiers_by_prompt(pool: pa.Table, where: str = "pool") -> dict[str, dict]:
    """annotate.schema.prompt_id_for(messages) -> verifier spec, for the prompts of a pool that carry one.

    Keyed by the prompt's content, not the pool's own prompt_id (a pool may name its prompts as it likes, as the
    demo pool does), so a prompt read from an export, a prompts file or another pool finds its verifier. Two
    different verifiers for the same messages are refused, naming `where`."""
    ids = dict(zip(pool.column("prompt_id").to_pylist(), pool.column("prompt").to_pylist()))
    out: dict[str, dict] = {}
    for pid, spec in pool_verifiers(pool).items():
        key = prompt_id_for(ids[pid])
        if out.setdefault(key, spec) != spec:
            raise SchemaError(f"{where}: field 'meta.verifier': prompt {pid!r} repeats an earlier prompt's messages "
                              "with a different verifier")  # fmt: skip
    return out


def read_verifiers(source: str | Path) -> dict[str, dict]:
    """The verifiers of a pool file, or of a store directory ('DIR' or 'DIR@N': the pools kept in it, read by
    read_store_pools), keyed as verifiers_by_prompt keys them."""
    from annotate.store import parse_store_spec

    root = parse_store_spec(str(source))[0]
    if not Path(root).is_dir():
        return verifiers_by_prompt(read_pool(source), str(source))
    pools = read_store_pools(source)
    return verifiers_by_prompt(pools, f"{root}: pool folder") if pools is not None else {}


def is_pool(path: str | Path) -> bool:
    """Whether a file's first row has a pool's candidate fields (response_id, response): a candidate pool, not an
    export or a prompts file. A directory or a file of another kind is not one."""
    path = Path(path)
    if not path.is_file() or not (path.suffix in (".parquet", ".csv") or is_jsonl(path)):
        return False
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return {"response_id", "response"} <= set(pq.read_schema(path).names)
    first = next(_rows(path), (0, {}))[1]
    return isinstance(first, dict) and {"response_id", "response"} <= set(first)


def read_store_pools(store: str | Path) -> pa.Table | None:
    """The pools a store keeps in its pool folder (annotate.store.pool_dir: `import --format pool`, and the
    verifiers of TRL imports with a gold answer) as one table; None when it has none. `store` may name a version
    (DIR@N); the folder is the store's. Gold pairs and verifiers of the audit and the dataset card come from here."""
    import pyarrow.parquet as pq

    from annotate.store import parse_store_spec, pool_dir

    files = sorted(pool_dir(parse_store_spec(str(store))[0]).glob("*.parquet"))
    # promote: a pool written by an older version may lack a newer optional column
    return pa.concat_tables([pq.read_table(p) for p in files], promote_options="default") if files else None


def write_pool(table_or_rows: pa.Table | list[dict], path: str | Path) -> Path:
    """Write a pool as JSONL (readable, diffable) or Parquet, by suffix."""
    path = Path(path)
    rows = table_or_rows.to_pylist() if isinstance(table_or_rows, pa.Table) else table_or_rows
    rows = [check_pool_row(r) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        pq.write_table(pool_table(rows), path)
    else:
        with open(path, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


GoldMap = dict[tuple[str, str, str], str]  # (prompt_id, lower response id, higher response id) -> winning id


def gold_pairs(pool: pa.Table) -> GoldMap:
    """Gold pairs (known answer) of a pool: both responses carry a numeric `gold_score` in `meta` and the scores
    differ; the higher score is the known-better response. The sampler and the audit both read gold from here."""
    scores: dict[str, dict[str, float]] = {}
    for row in pool.select(["prompt_id", "response_id", "meta"]).to_pylist():
        try:
            value = json.loads(row["meta"] or "{}").get("gold_score")
        except (json.JSONDecodeError, AttributeError):
            continue
        if isinstance(value, int | float) and not isinstance(value, bool):
            scores.setdefault(row["prompt_id"], {})[row["response_id"]] = float(value)
    gold: GoldMap = {}
    for pid, by_id in scores.items():
        ids = sorted(by_id)
        for i, lo in enumerate(ids):
            for hi in ids[i + 1 :]:
                if by_id[lo] != by_id[hi]:
                    gold[(pid, lo, hi)] = lo if by_id[lo] > by_id[hi] else hi
    return gold


def _prompt_lines(path: Path) -> Iterator[tuple[int, Any, Any]]:
    """(line number, raw prompt, prompt_id or None) from JSONL(.gz) rows or the lines of a plain text file."""
    if is_jsonl(path):
        for n, row in iter_jsonl(path):  # names file and line for bad JSON or a truncated gzip
            if "prompt" not in row:
                raise SchemaError(f"{path}: line {n}: missing field 'prompt'")
            yield n, row["prompt"], row.get("prompt_id")
        return
    for n, line in iter_lines(path):
        if line.strip():
            yield n, line.rstrip("\r\n"), None


def read_prompts(path: str | Path) -> list[dict[str, Any]]:
    """Read prompts from JSONL ({prompt_id?, prompt: text or messages} per line) or plain text (one per line).

    A candidate pool also works as a prompts file: rows repeating a prompt_id with the same prompt collapse
    into one. A prompt without a prompt_id gets annotate.schema.prompt_id_for's, the id an import of the same
    messages gets. Errors name the file, the line and the field.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such prompts file")
    prompts: dict[str, dict[str, Any]] = {}
    for n, raw_prompt, pid in _prompt_lines(path):
        where = f"{path}: line {n}"
        try:
            messages = as_messages(raw_prompt)
        except SchemaError as e:
            raise SchemaError(f"{where}: {e}") from None
        if pid is None:
            pid = prompt_id_for(messages)  # the id an import of the same prompt gets
        elif not isinstance(pid, str) or not pid.strip():
            raise SchemaError(f"{where}: field 'prompt_id': expected non-empty text, got {pid!r}")
        if pid in prompts and prompts[pid]["prompt"] != messages:
            raise SchemaError(f"{where}: field 'prompt_id': {pid!r} already used for a different prompt")
        prompts.setdefault(pid, {"prompt_id": pid, "prompt": messages})
    if not prompts:
        raise SchemaError(f"{path}: no prompts found")
    return list(prompts.values())
