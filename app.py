"""Serve the annotation app: `python app.py [--pool POOL] [--store DIR] [--users FILE] ...`.

With no arguments it serves the bundled demo pool (datasets/demo/pool.jsonl) on 127.0.0.1, keeps votes in ./votes/
and prints the URL. Thin on purpose: parse options, build the store, sampler and UI, serve them with uvicorn behind
annotate.web's login (--users), with sessions of --session-hours.

Without --users anyone who can reach the port annotates under any name, so a non-loopback --host needs
--insecure-no-login; the admin tabs (Export, Dashboard) are then shown only with --demo-admin.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import signal
import socket
import sys
from functools import partial
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
    p.add_argument("--session-hours", type=float, default=12.0, help="with --users: a login lasts this long")
    p.add_argument(
        "--insecure-no-login", action="store_true",
        help="serve a non-loopback --host without --users (anyone reaching the port can vote as anyone)",
    )  # fmt: skip
    p.add_argument("--demo-admin", action="store_true", help="without --users: show the Export and Dashboard tabs")
    p.add_argument(
        "--strategy", default="balanced",
        help="pair sampling: uniform | balanced | active (reward model) | judge (where the AI judge's votes in "
        "--store are unsure or flip across orders; python rlhf/train.py judge)",
    )  # fmt: skip
    p.add_argument("--reward-model", help="reward model directory ranking pairs for --strategy active (required)")
    p.add_argument(
        "--objective",
        help="with --reward-model: weights of a multi-head reward model's heads, e.g. correct=2,overall=1",
    )
    p.add_argument(
        "--reward-refresh-s", type=float, default=0.0,
        help="with --strategy active: re-score the pool when --reward-model's weights change (check every N s)",
    )  # fmt: skip
    p.add_argument("--overlap", type=int, default=1, help="different annotators per pair (agreement)")
    p.add_argument("--gold-share", type=float, default=0.0, help="share of serves that are gold pairs")
    p.add_argument("--repeat-rate", type=float, default=0.0, help="share of serves re-showing a judged pair swapped")
    p.add_argument("--honeypot-rate", type=float, default=0.0, help="share of serves showing a response vs itself")
    p.add_argument("--seed", type=int, help="sampler seed (reproducible serving order)")
    # Annotator checks (annotate/qualify.py), all off by default.
    p.add_argument(
        "--qualify", type=int, default=0, metavar="N",
        help="a new annotator first judges N gold pairs, with the right answer and why after each; their votes "
        "count once they pass, and one who fails is served nothing more",
    )  # fmt: skip
    p.add_argument("--qualify-min", type=float, default=0.8, metavar="ACC",
                   help="share of the --qualify pairs to get right to pass (default 0.8)")  # fmt: skip
    p.add_argument(
        "--live-checks", action="store_true",
        help="a sequential test on honeypots, swapped repeats and gold pairs pauses an annotator who looks like "
        "a random voter, for an admin to review (give --honeypot-rate, --repeat-rate or --gold-share)",
    )  # fmt: skip
    p.add_argument("--daily-cap", type=int, default=0, metavar="N", help="at most N pairs per annotator per UTC day")
    p.add_argument("--too-fast", type=float, default=0.0, metavar="SECONDS",
                   help="count votes decided faster than this; flag annotators for whom that is the rule")  # fmt: skip
    p.add_argument("--guidelines", help="Markdown file replacing the default guidelines")
    p.add_argument("--concurrency", type=int, default=32, help="handlers running at once (threads)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if mistake := _flag_mistake(args):
        print(f"error: {mistake}", file=sys.stderr)
        return 2
    if not args.users and not _is_loopback(args.host):
        print(f"WARNING: serving {args.host} WITHOUT LOGIN (--insecure-no-login): anyone who can reach port "
              f"{args.port} can annotate under any name.", file=sys.stderr, flush=True)  # fmt: skip
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no network calls home
    # Gradio rebuilds a pandas summary of recent events after every event by default; under load that costs
    # more CPU than the vote itself.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "500")
    from annotate.api import add_json_api
    from annotate.replicas import ReplicaFollower
    from annotate.ui import CSS, AppConfig, build_app, make_service
    from annotate.web import ExportRegistry, build_web_app

    try:
        store, sampler, gate, auth = _open(args)
    except (SchemaError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Other app processes on this store (replicas, failover): their votes and serves reach this sampler too.
    follower = ReplicaFollower(store, sampler).start()
    gc.freeze()  # the pool's start-up objects live for good: later collections need not rescan them
    exports = ExportRegistry()  # snapshots for the admin who asked, at an unguessable URL, once
    config = AppConfig(
        auth=auth, admin_without_login=args.demo_admin, publish_export=exports.publish, replicas=follower, gate=gate
    )
    if args.guidelines:
        config.guidelines = Path(args.guidelines).read_text(encoding="utf-8")
    service = make_service(config, store, sampler)  # one service behind both doors: the screen and the JSON API
    blocks = build_app(config, store, sampler, service)
    blocks.queue(default_concurrency_limit=args.concurrency)
    routes = partial(add_json_api, service=service, auth=auth)
    web = build_web_app(blocks, auth, exports, css=CSS, title=config.title, routes=routes)
    try:
        sock = _bind(args.host, args.port)
    except OSError as e:
        print(f"error: cannot serve on {args.host}:{args.port}: {e}", file=sys.stderr)
        store.close()
        return 2
    print(f"pool {args.pool}: {len(sampler.pairs)} pairs; votes in {Path(args.store).resolve()}", flush=True)
    # Printed once the socket listens: connections made from now on wait in its backlog until the app takes them,
    # so nothing depends on a start-up self-check.
    print(f"serving at http://{args.host}:{args.port}", flush=True)
    try:
        _serve(web, sock)
    finally:
        follower.close()
        store.close()  # votes are durable already; this only folds the write-ahead segment into Parquet
        exports.close()
        sock.close()
    return 0


def _flag_mistake(args: argparse.Namespace) -> str | None:
    """What is wrong with the flags, in one line (None when nothing is)."""
    if (args.strategy == "active") != bool(args.reward_model):
        return ("--strategy active and --reward-model DIR go together (active ranks pairs by the reward model's "
                "uncertainty; other strategies use no model)")  # fmt: skip
    if args.objective and not args.reward_model:
        return "--objective weighs the heads of --reward-model; give both"
    if not args.session_hours > 0:
        return "--session-hours must be positive"
    if not args.users and not _is_loopback(args.host) and not args.insecure_no_login:
        return (f"--host {args.host} serves the network, but without --users there is no login: anyone who reaches "
                "the port could vote under any name and see every vote. Give --users FILE (create it with "
                "`python -m annotate add-user`), or --insecure-no-login to serve it open anyway.")  # fmt: skip
    return None


def _open(args: argparse.Namespace):
    """(store, sampler, annotator checks or None, authenticator or None), from the flags; a bad pool, store or
    setting raises SchemaError, FileNotFoundError or ValueError (exit 2)."""
    from annotate.pool import read_pool
    from annotate.sampler import PairSampler
    from annotate.store import ComparisonStore
    from annotate.users import Authenticator

    # Votes are sealed into the Delta table 5 s after a lull and at most 30 s after they arrive, so exports,
    # training and other engines see them soon; until then they are durable in the write-ahead segment.
    store = ComparisonStore(args.store, seal_idle_s=5.0, seal_max_age_s=30.0)
    pool = read_pool(args.pool)
    records = store.read()
    strategy, votes = args.strategy, records
    if args.reward_model:
        strategy = _active_strategy(pool, args.reward_model, args.reward_refresh_s, args.objective)
    elif args.strategy == "judge":  # the judge's doubt ranks pairs; its own votes do not close them
        from annotate.active import judge_strategy

        strategy, votes = judge_strategy(records)
    sampler = PairSampler(
        pool, strategy=strategy, overlap=args.overlap, gold_share=args.gold_share,
        repeat_rate=args.repeat_rate, honeypot_rate=args.honeypot_rate, seed=args.seed, votes=votes,
    )  # fmt: skip
    gate = _gate(args, pool, store, sampler, records)
    auth = Authenticator(args.users, session_hours=args.session_hours) if args.users else None
    return store, sampler, gate, auth


def _serve(web, sock: socket.socket) -> None:
    """Serve `web` on the listening socket until SIGINT or SIGTERM."""
    import uvicorn

    from annotate.web import end_streams

    class Server(uvicorn.Server):
        async def shutdown(self, sockets=None) -> None:
            end_streams(web)  # browsers' heartbeat streams would hold the graceful stop until its timeout
            await super().shutdown(sockets=sockets)

    server = Server(uvicorn.Config(web, log_level="warning", timeout_graceful_shutdown=5))
    try:
        # uvicorn stops gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler it found: this one
        # (and Python's for SIGINT) turn that into a KeyboardInterrupt caught here, so the store is closed after.
        signal.signal(signal.SIGTERM, _interrupt)
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (IPv4 or IPv6, as the address says)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]  # fmt: skip
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart right away over TIME_WAIT
        sock.bind(addr)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _active_strategy(pool, model_dir: str, refresh_s: float, objective: str | None = None):
    from rlhf.reward import active_strategy  # the entry point wires the model in: annotate/ never loads one

    if not Path(model_dir, "config.json").exists():
        raise FileNotFoundError(f"--reward-model {model_dir}: no config.json there (train one: rlhf/train.py reward)")
    strategy = active_strategy(pool, model_dir, objective)
    if refresh_s > 0:
        strategy.watch(refresh_s)
    return strategy


def _gate(args: argparse.Namespace, pool, store, sampler, records):
    """The annotator checks the flags ask for (annotate.qualify), replayed from the store; None when none is on.
    Started before the replica follower, so every record from then on reaches it once."""
    from annotate.qualify import AnnotatorGate, CheckConfig, gold_reasons

    config = CheckConfig(qualify_n=args.qualify, qualify_min=args.qualify_min, live=args.live_checks,
                         daily_cap=args.daily_cap, too_fast_s=args.too_fast)  # fmt: skip
    if not config.enabled:
        return None
    if args.qualify > len(sampler.gold_pairs):
        raise ValueError(f"--qualify {args.qualify}: the pool has only {len(sampler.gold_pairs)} gold pairs "
                         "(two responses of a prompt with different meta.gold_score)")  # fmt: skip
    if args.live_checks and not (args.gold_share or args.repeat_rate or args.honeypot_rate):
        print("warning: --live-checks has nothing to check without --gold-share, --repeat-rate or --honeypot-rate",
              file=sys.stderr)  # fmt: skip
    gate = AnnotatorGate(config, sampler.gold, gold_reasons(pool), store.root)
    gate.load(records)
    sampler.subscribe(gate.observe)
    return gate


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
