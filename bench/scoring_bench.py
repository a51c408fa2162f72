"""Scoring time and padding: the one scoring path (length-sorted batches) against the old file-order batches of 32.

    .venv/bin/python bench/scoring_bench.py --data /tmp/hh/prefs-train.parquet --pairs 300

Both run in this process on the same model, the same conversations (chosen and rejected of each pair), one after
the other, so their ratio is measured side by side. The model is the default SmolLM2 with a fresh score head
(scores are not meaningful, the cost is); both paths must give the same scores, which is checked.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def file_order_scores(model, ids: list[list[int]], batch_size: int = 32) -> tuple[list[float], int]:
    """The path before issue 12: pairs in file order, each batch padded to its longest sequence."""
    import torch

    from rlhf.reward import last_token_scores

    out, pushed = [], 0
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        width = max(map(len, batch))
        pushed += width * len(batch)
        input_ids = torch.tensor([x + [0] * (width - len(x)) for x in batch])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch])
        with torch.no_grad():
            out += last_token_scores(model, input_ids, mask).tolist()
    return out, pushed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="an export (.parquet/.jsonl) or a store of preference pairs")
    ap.add_argument("--pairs", type=int, default=300, help="first N pairs of the file")
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default="bench/results/scoring.json")
    args = ap.parse_args()

    import torch

    from rlhf.data import load_preferences
    from rlhf.models import load_tokenizer
    from rlhf.reward import conversation_ids, length_batches, load_reward_model, score_ids

    torch.manual_seed(0)
    tok = load_tokenizer(args.model)
    model = load_reward_model(args.model, tok).eval()
    rows = load_preferences(args.data).select(range(args.pairs))
    ids = [conversation_ids(tok, r["prompt"], r[side][-1]["content"]) for r in rows for side in ("chosen", "rejected")]
    real = sum(map(len, ids))
    new_pushed = sum(len(b) * max(len(ids[i]) for i in b) for b in length_batches([len(x) for x in ids], 32))

    t0 = time.perf_counter()
    old, old_pushed = file_order_scores(model, ids)
    t1 = time.perf_counter()
    new = score_ids(model, ids, batch_size=32)
    t2 = time.perf_counter()
    result = {
        "pairs": len(rows),
        "sequences": len(ids),
        "real_tokens": real,
        "file_order": {"seconds": round(t1 - t0, 1), "tokens_pushed": old_pushed, "ratio": old_pushed / real},
        "length_sorted": {"seconds": round(t2 - t1, 1), "tokens_pushed": new_pushed, "ratio": new_pushed / real},
        "speedup": round((t1 - t0) / (t2 - t1), 2),
        "max_score_difference": max(abs(a - b) for a, b in zip(old, new)),
        "torch_threads": torch.get_num_threads(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
