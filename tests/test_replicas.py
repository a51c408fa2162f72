"""Two app processes on one store, 20 annotators split across them, one process SIGKILLed mid-run: nobody is
served a pair twice, overlap holds across processes, and no acknowledged vote is lost."""

import re
import threading
import time
from collections import Counter, defaultdict

import pytest

gradio_client = pytest.importorskip("gradio_client")

from apphelpers import Server, write_pool  # noqa: E402

from annotate.store import effective_votes, read_table  # noqa: E402

pytestmark = pytest.mark.slow
BODY = re.compile(r'<div class="card-body">(.*?)</div></div>', re.S)
VOTES_EACH, OVERLAP = 10, 2


def signature(out) -> tuple:
    """What the annotator saw: the prompt and the two responses, whichever side each was on."""
    return out[0], tuple(sorted(BODY.findall(out[1]) + BODY.findall(out[2])))


def test_failover_between_two_processes(tmp_path):
    pool, store = write_pool(tmp_path / "pool.jsonl", n_prompts=50, nasty=False), tmp_path / "votes"
    args = ("--overlap", str(OVERLAP), "--seed", "5")
    a, b = Server(pool, store, *args, log=tmp_path / "a.log"), Server(pool, store, *args, log=tmp_path / "b.log")
    served: dict[str, list] = defaultdict(list)
    acked: Counter = Counter()
    errors: list[str] = []
    a_dead = threading.Event()

    def annotator(name: str, home: Server) -> None:
        server = home
        c = gradio_client.Client(server.url, verbose=False, download_files=False)
        out = c.predict(name=name, api_name="/next_pair")
        served[name].append(signature(out))
        done = 0
        while done < VOTES_EACH:
            try:
                out = c.predict(choice="ab"[done % 2], name=name, token=out[5], api_name="/vote")
            except Exception as e:  # noqa: BLE001 - the process this client used died: fail over
                if server is b or not a_dead.is_set():
                    errors.append(f"{name}: {e}")
                    return
                server = b
                c = gradio_client.Client(b.url, verbose=False, download_files=False)
                out = c.predict(name=name, api_name="/next_pair")
                served[name].append(signature(out))
                continue
            acked[name] += 1
            done += 1
            served[name].append(signature(out))

    try:
        threads = [threading.Thread(target=annotator, args=(f"ann{n:02d}", a if n < 10 else b)) for n in range(20)]
        [t.start() for t in threads]
        deadline = time.time() + 120
        while sum(acked.values()) < 60 and time.time() < deadline:
            time.sleep(0.05)
        a_dead.set()
        a.kill()  # SIGKILL mid-run: its annotators' next calls fail and they move to b
        [t.join(timeout=300) for t in threads]
    finally:
        a.kill()
        b.kill()
    assert not errors, errors
    assert all(acked[f"ann{n:02d}"] == VOTES_EACH for n in range(20)), acked
    for name, seen in served.items():
        shown = [s for s in seen if s[1]]  # an empty screen (nothing left) is not a pair
        assert len(shown) == len(set(shown)), f"{name} was served a pair twice"
    votes = effective_votes(read_table(str(store)))
    stored = Counter(votes["annotator"])
    for n in range(20):  # every acknowledged vote; at most the one in flight when its process died on top
        name = f"ann{n:02d}"
        assert acked[name] <= stored[name] <= acked[name] + (n < 10), (name, acked[name], stored[name])
    judges = votes.assign(lo=votes[["response_a_id", "response_b_id"]].min(axis=1),
                          hi=votes[["response_a_id", "response_b_id"]].max(axis=1))  # fmt: skip
    per_pair = judges.groupby(["prompt_id", "lo", "hi"])["annotator"].nunique()
    assert per_pair.max() <= OVERLAP
    assert (judges.groupby(["annotator", "prompt_id", "lo", "hi"]).size() == 1).all()
