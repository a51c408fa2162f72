"""Load test: N concurrent gradio_client annotators voting against a real app server for D seconds.

Reports votes/s, p50/p99 latency of one vote call (the vote event records the vote durably and returns the
next pair, so this is "vote + next pair"), and checks the store holds exactly the acknowledged votes.
    python bench/app_load.py --clients 50 --duration 60 --rate 100
"""

from __future__ import annotations

import argparse
import json
import random
import ssl
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test helper that starts app.py on a free port
PAIRS_PER_PROMPT = 6  # 4 candidates per prompt: C(4, 2) pairs


def synthetic_pool(path: Path, n_prompts: int | None = None, *, pool_size: int | None = None) -> Path:
    """A JSONL pool of n_prompts x 4 candidates (6 pairs each); with pool_size, ceil(pool_size / 6) prompts."""
    if pool_size is not None:
        n_prompts = -(-pool_size // PAIRS_PER_PROMPT)
    rows = [
        {"prompt_id": f"p{p}", "prompt": [{"role": "user", "content": f"Question {p}?"}], "response_id": f"r{r}",
         "response": f"Answer {r} to question {p}. " * (1 + r), "source": f"model{r}", "meta": "{}"}
        for p in range(n_prompts) for r in range(4)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


SSL_CONTEXT = ssl.create_default_context()


def annotator(url: str, name: str, stop: threading.Event, lat: list[float], acked: list[int], interval: float,
              client: str = "gradio") -> None:  # fmt: skip
    """One annotator voting until `stop`: through gradio_client (the screen's path) or the JSON API."""
    if client == "json":
        import httpx

        http = httpx.Client(base_url=url, timeout=120)
        shown = http.post("/api/v1/next", json={"name": name}).json()
        session, token = shown["session"], shown["token"]

        def vote(choice: str, token: str) -> str:
            r = http.post("/api/v1/vote", json={"session": session, "token": token, "choice": choice})
            r.raise_for_status()  # an error is not an acknowledgement
            return r.json()["token"]
    else:
        from gradio_client import Client

        # One shared SSL context: otherwise httpx builds a new one (loading the CA bundle, ~16 ms of CPU) for every
        # request, and the clients, not the server, become what the benchmark measures.
        c = Client(url, verbose=False, download_files=False, ssl_verify=SSL_CONTEXT)
        token = c.predict(name=name, api_name="/next_pair")[5]  # each vote names the pair it is for (page token)

        def vote(choice: str, token: str) -> str:
            return c.predict(choice=choice, name=name, token=token, api_name="/vote")[5]

    i, due = 0, time.perf_counter() + random.uniform(0, interval)
    while not stop.is_set():
        if interval:
            time.sleep(max(0.0, due - time.perf_counter()))
        t0 = due if interval else time.perf_counter()  # paced: latency counts from when the vote was due
        token = vote(("a", "b", "tie")[i % 3], token)
        lat.append(time.perf_counter() - t0)
        acked[0] += 1  # one slot per thread, summed later
        i, due = i + 1, due + interval


def run(args: argparse.Namespace, rate: float) -> str:
    """One load phase against a fresh server; rate 0 = as fast as the clients can go. Returns a table row."""
    from apphelpers import Server

    from annotate.store import read_table

    tmp = Path(tempfile.mkdtemp(prefix="app-load-"))
    store = tmp / "votes"
    pool = Path(args.pool) if args.pool else synthetic_pool(tmp / "pool.jsonl", args.prompts, pool_size=args.pool_size)
    servers = [Server(pool, store, "--overlap", str(args.overlap), "--concurrency", "64")
               for _ in range(args.processes)]  # fmt: skip
    interval = args.clients / rate if rate else 0.0
    stop = threading.Event()
    lats = [[] for _ in range(args.clients)]
    acks = [[0] for _ in range(args.clients)]
    # With several processes (replicas on one store) the clients are spread over them, as a load balancer would.
    urls = [servers[i % len(servers)].url for i in range(args.clients)]
    threads = [threading.Thread(target=annotator, args=(urls[i], f"ann{i:02d}", stop, lats[i], acks[i], interval,
                                                        args.client))
               for i in range(args.clients)]  # fmt: skip
    for t in threads:
        t.start()
    time.sleep(5)  # let every client connect and get its first pair before measuring
    base = sum(a[0] for a in acks)
    t0 = time.perf_counter()
    n_before = [len(x) for x in lats]
    time.sleep(args.duration)
    elapsed = time.perf_counter() - t0
    window = [x for lat, n in zip(lats, n_before) for x in lat[n:]]
    measured = sum(a[0] for a in acks) - base
    stop.set()
    for t in threads:
        t.join(timeout=30)
    acked = sum(a[0] for a in acks)
    for server in servers:
        server.kill()  # SIGKILL, then count what is on disk
    stored = read_table(str(store)).num_rows
    q = statistics.quantiles(window, n=100)
    offered = f"{rate:g}/s" if rate else "max"
    return (
        f"| {args.processes} | {args.clients} | {offered} | {elapsed:.0f} | {measured} | {measured / elapsed:.1f} | "
        f"{q[49] * 1000:.0f} | {q[98] * 1000:.0f} | {acked} | {stored} | {acked - stored} |"
    ), stored == acked


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--duration", type=float, default=60.0)
    p.add_argument("--rate", type=float, default=100.0, help="offered votes/s of the paced phase (all clients)")
    p.add_argument("--prompts", type=int, default=2000, help="synthetic pool size (4 candidates each)")
    p.add_argument(
        "--pool-size", type=int, default=None, metavar="N",
        help="synthetic pool of N pairs instead: ceil(N / 6) prompts x 4 candidates (overrides --prompts)",
    )  # fmt: skip
    p.add_argument("--pool", help="serve this pool file instead of a synthetic one (e.g. datasets/demo/pool.jsonl)")
    p.add_argument(
        "--overlap", type=int, default=2,
        help="annotators per pair; a small pool needs a large one so that 50 clients do not run out of pairs",
    )  # fmt: skip
    p.add_argument(
        "--client",
        choices=("gradio", "json"),
        default="gradio",
        help="gradio: gradio_client, the screen's path; json: the /api/v1 JSON API (annotate/api.py)",
    )
    p.add_argument("--processes", type=int, default=1, help="app processes on one store (replicas), clients spread")
    p.add_argument("--out", default=str(ROOT / "bench/results/app.md"))
    args = p.parse_args()
    rows = [run(args, args.rate), run(args, 0.0)]
    prompts = args.prompts if args.pool_size is None else -(-args.pool_size // PAIRS_PER_PROMPT)
    pool_arg = "" if args.pool_size is None else f" --pool-size {args.pool_size}"
    pool_desc = f"{prompts} prompts x 4 candidates ({prompts * PAIRS_PER_PROMPT} pairs)"
    if args.pool:
        pool_arg, pool_desc = f" --pool {args.pool}", args.pool
    pool_arg += f" --overlap {args.overlap}" if args.overlap != 2 else ""
    pool_arg += f" --processes {args.processes}" if args.processes != 1 else ""
    pool_arg += f" --client {args.client}" if args.client != "gradio" else ""
    lines = [
        "# App load benchmark",
        "",
        f"Command: `.venv/bin/python bench/app_load.py --clients {args.clients} --duration {args.duration:g} "
        f"--rate {args.rate:g}{pool_arg}`",
        f"Machine: 2 CPU cores; server and clients on the same machine. Pool: {pool_desc}, --overlap "
        f"{args.overlap}, durable (fsync'd) store. Each phase uses a "
        "fresh server, SIGKILLed at the end before the store is counted.",
        "",
        "| processes | clients | offered | seconds | votes | votes/s | p50 ms | p99 ms | acknowledged | in store "
        "| lost |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *(row for row, _ in rows),
        "",
        f"Latency = one `vote` call via {'the JSON API' if args.client == 'json' else 'gradio_client'} (records the "
        "vote durably, returns the next pair). Paced phase: "
        "each annotator votes on a fixed schedule (clients / rate seconds apart) and latency counts from when the "
        "vote was due, so a slow server cannot hide queueing (no coordinated omission). `max`: every annotator "
        "votes again as soon as the last vote returns (saturation; latency = clients / throughput by Little's law). "
        "gradio_client itself polls for results every 50 ms, which adds up to 50 ms to each call.",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(ok for _, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
