"""Serve the annotation app: `python app.py [--pool POOL] [--store DIR] [--users FILE] ...`.

With no arguments it serves the bundled demo pool (datasets/demo/pool.jsonl), keeps votes in ./votes/ and
prints the URL. Thin on purpose: parse options, build the store, sampler and UI, launch.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from annotate.schema import SchemaError

HERE = Path(__file__).resolve().parent


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Serve the pairwise annotation app.")
    p.add_argument("--pool", default=str(HERE / "datasets/demo/pool.jsonl"), help="candidate pool (JSONL/CSV/Parquet)")
    p.add_argument("--store", default="votes", help="comparison store directory (created if missing)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 to serve the network)")
    p.add_argument("--port", type=int, default=7860, help="port")
    p.add_argument("--users", help="users file (python -m annotate add-user); turns on login")
    p.add_argument("--strategy", default="balanced", help="pair sampling: uniform | balanced | active")
    p.add_argument("--reward-model", help="reward model directory ranking pairs for --strategy active (required)")
    p.add_argument(
        "--reward-refresh-s", type=float, default=0.0,
        help="with --strategy active: re-score the pool when --reward-model's weights change (check every N s)",
    )  # fmt: skip
    p.add_argument("--overlap", type=int, default=1, help="different annotators per pair (agreement)")
    p.add_argument("--gold-share", type=float, default=0.0, help="share of serves that are gold pairs")
    p.add_argument("--repeat-rate", type=float, default=0.0, help="share of serves re-showing a judged pair swapped")
    p.add_argument("--honeypot-rate", type=float, default=0.0, help="share of serves showing a response vs itself")
    p.add_argument("--seed", type=int, help="sampler seed (reproducible serving order)")
    p.add_argument("--guidelines", help="Markdown file replacing the default guidelines")
    p.add_argument("--concurrency", type=int, default=32, help="handlers running at once (threads)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.strategy == "active") != bool(args.reward_model):
        print("error: --strategy active and --reward-model DIR go together (active ranks pairs by the reward "
              "model's uncertainty; other strategies use no model)", file=sys.stderr)  # fmt: skip
        return 2
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls home
    # Gradio rebuilds a pandas summary of recent events after every event by default; under load that costs
    # more CPU than the vote itself.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "500")
    from annotate.pool import read_pool
    from annotate.sampler import PairSampler
    from annotate.store import ComparisonStore
    from annotate.ui import CSS, AppConfig, build_app
    from annotate.users import Authenticator

    try:
        store = ComparisonStore(args.store, seal_idle_s=5.0)  # votes reach Parquet parts 5 s after a lull
        pool = read_pool(args.pool)
        strategy = args.strategy
        if args.reward_model:
            strategy = _active_strategy(pool, args.reward_model, args.reward_refresh_s)
        sampler = PairSampler(
            pool, strategy=strategy, overlap=args.overlap, gold_share=args.gold_share,
            repeat_rate=args.repeat_rate, honeypot_rate=args.honeypot_rate, seed=args.seed, votes=store.read(),
        )  # fmt: skip
        auth = Authenticator(args.users) if args.users else None
    except (SchemaError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    config = AppConfig(auth=auth)
    if args.guidelines:
        config.guidelines = Path(args.guidelines).read_text(encoding="utf-8")
    app = build_app(config, store, sampler)
    app.queue(default_concurrency_limit=args.concurrency)
    print(f"pool {args.pool}: {len(sampler.pairs)} pairs; votes in {Path(args.store).resolve()}", flush=True)
    print(f"serving at http://{args.host}:{args.port}", flush=True)
    signal.signal(signal.SIGTERM, _interrupt)  # stop like Ctrl-C, so the store is sealed below
    try:
        app.launch(
            server_name=args.host, server_port=args.port, auth=auth, css=CSS, show_error=True, quiet=True,
            auth_message="Log in with the name and password your admin gave you.",
        )  # fmt: skip
    finally:
        store.close()  # votes are durable already; this only folds the write-ahead segment into Parquet
    return 0


def _active_strategy(pool, model_dir: str, refresh_s: float):
    from annotate.active import ActiveStrategy

    if not Path(model_dir, "config.json").exists():
        raise FileNotFoundError(f"--reward-model {model_dir}: no config.json there (train one: rlhf/train.py reward)")
    strategy = ActiveStrategy.from_reward_model(pool, model_dir)
    if refresh_s > 0:
        strategy.watch(refresh_s)
    return strategy


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
