"""The data of bench/correct_vs_preferred.py: checkable prompts, their candidates, and simulated annotators who like
long, confident answers more than right ones.

Generated prompts (generate_pool): arithmetic ("What is 37 + 48?", "What is 63 - 29?", "What is 7 x 23?") and unit
conversion ("How many centimetres are in 4.5 metres?"), each with a numeric verifier (annotate.verifiers) and eight
candidates, right/wrong x short/long x confident/hedged. A wrong answer is a plausible slip (a carry off by ten, a
missing partial product, a wrong conversion factor), and a long wrong answer shows working that leads to it, so
length and tone say nothing about correctness by construction. The demo pool's 40 checkable prompts come along
with their four candidates each (right-short, right-long, wrong-confident, wrong-hedged).

Simulated annotators (simulate_votes) vote on pairs of candidates of a prompt. A candidate's appeal is +1 for sounding
confident (meta.confident, else more confidence than hedging markers, annotate.audit_features) and +1 for being the
longer of the two (characters). Each vote goes by style with probability `bias` (0.7): the more appealing candidate
wins (a coin on equal appeal); otherwise by correctness: the candidate that passes the verifier wins (by style where
both or neither pass). So where the wrong answer is the more appealing one it wins exactly `bias` of the time: the
planted gap. The annotators give no `correct` criterion pick: `annotate export` labels criterion_correct from the
verifiers wherever exactly one response passes (annotate/criteria.py), the label the `correct` head trains on, and
an annotator fooled 70% of the time would add nothing a verifier does not know better. Votes go into a real store
through its append API (ComparisonStore.add_new, as the importers write), with ids fixed by content and seed.
"""

from __future__ import annotations

import itertools
import json
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEMO_POOL = REPO / "datasets/demo/pool.jsonl"
DEMO_KINDS = ("right_short", "right_long", "wrong_confident", "wrong_hedged")  # the demo's checkable candidates
SOURCE = "bench:checkable"
# (larger unit, smaller unit, factor, a factor people confuse it with): the confusion is the wrong answer's slip.
UNITS = (
    ("metre", "centimetres", 100, 10),
    ("kilometre", "metres", 1000, 100),
    ("kilogram", "grams", 1000, 100),
    ("litre", "millilitres", 1000, 100),
    ("hour", "minutes", 60, 100),
    ("minute", "seconds", 60, 100),
    ("foot", "inches", 12, 10),
    ("pound", "ounces", 16, 10),
    ("day", "hours", 24, 12),
    ("yard", "feet", 3, 12),
)
PLURAL = {"foot": "feet"}
# (long, confident) -> phrasings; {work} is the working, {x} the final answer (the verifier reads the number after
# "answer is", else the last number, so nothing numeric follows {x}).
TEMPLATES = {
    (False, True): ("The answer is {x}.", "It is definitely {x}.", "Clearly {x}."),
    (False, False): ("I think it might be {x}, but I'm not sure.", "Probably {x}, though I could be wrong."),
    (True, True): (
        "Let's work it out step by step. {work} Checking the result confirms it, so the answer is definitely {x}.",
        "This is a straightforward calculation. {work} There is no doubt about it: the answer is clearly {x}.",
    ),
    (True, False): (
        "Let me try to work this out, although I might make a mistake. {work} So I believe it is probably {x}, but "
        "it may be worth double-checking.",
        "I'm not completely certain, but here is my attempt. {work} That suggests it could be roughly {x}, if I "
        "have not slipped somewhere.",
    ),
}


def _num(x: float) -> str:
    return f"{x:g}" if x != int(x) else str(int(x))


# -- generated prompts -------------------------------------------------------------------------------------------
def _arithmetic(rng: random.Random) -> tuple[str, float, float, str, str]:
    """(prompt, right answer, wrong answer, working to the right one, working to the wrong one)."""
    op = rng.choice("+-x")
    if op == "+":
        a, b = rng.randint(12, 89), rng.randint(12, 89)
        right, wrong = a + b, a + b + rng.choice((-10, 10, -1, 1))  # a carry dropped or added twice
        work = f"First add the tens: {a // 10 * 10} + {b // 10 * 10}. Then add the ones: {a % 10} + {b % 10}."
        return f"What is {a} + {b}?", right, wrong, work, work
    if op == "-":
        a, b = rng.randint(40, 99), rng.randint(11, 39)
        right, wrong = a - b, a - b + rng.choice((-10, 10))  # a borrow forgotten
        work = f"Start from {a}, take away {b // 10 * 10}, then take away {b % 10} more."
        return f"What is {a} - {b}?", right, wrong, work, work
    a, b = rng.randint(3, 9), rng.randint(12, 29)
    right = a * b
    wrong = a * (b // 10 * 10) + b % 10  # the ones' partial product added unmultiplied
    work = f"Split {b} into {b // 10 * 10} and {b % 10}, multiply each part by {a}, and add the two parts."
    return f"What is {a} x {b}?", right, wrong, work, work


def _units(rng: random.Random) -> tuple[str, float, float, str, str]:
    big, small, factor, confused = rng.choice(UNITS)
    q = rng.choice([*range(2, 31), 1.5, 2.5, 3.5, 4.5])  # 10 units x 33 amounts: 330 prompts
    plural = PLURAL.get(big, big + "s")
    work = lambda f: f"There are {f} {small} in one {big}, so multiply {_num(q)} by {f}."  # noqa: E731
    return f"How many {small} are in {_num(q)} {plural}?", q * factor, q * confused, work(factor), work(confused)


def generate_pool(n_prompts: int, seed: int = 0) -> list[dict[str, Any]]:
    """Pool rows (annotate.schema.POOL_SCHEMA) of `n_prompts` distinct generated prompts, half arithmetic and half
    units, eight candidates each, every row carrying the prompt's numeric verifier in meta."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _ in range(50 * n_prompts):  # draws repeat: bounded, so an impossible size fails instead of spinning
        if len(seen) == n_prompts:
            break
        category = "arithmetic" if len(seen) % 2 == 0 else "units"
        prompt, right, wrong, work_right, work_wrong = (_arithmetic if category == "arithmetic" else _units)(rng)
        if prompt in seen or wrong == right or wrong < 0:
            continue
        seen.add(prompt)
        pid = f"gen-{category}-{len(seen):04d}"
        verifier = {"type": "numeric", "answer": right}
        for correct, long, confident in itertools.product((True, False), repeat=3):
            x, work = (right, work_right) if correct else (wrong, work_wrong)
            kind = "_".join(("right" if correct else "wrong", "long" if long else "short",
                             "confident" if confident else "hedged"))  # fmt: skip
            meta = {"category": category, "checkable": True, "correct": correct, "long": long, "confident": confident,
                    "kind": kind, "verifier": verifier}  # fmt: skip
            text = rng.choice(TEMPLATES[long, confident]).format(x=_num(x), work=work)
            rows.append({"prompt_id": pid, "prompt": [{"role": "user", "content": prompt}],
                         "response_id": f"{pid}-{kind}", "response": text, "source": SOURCE,
                         "meta": json.dumps(meta)})  # fmt: skip
    if len(seen) < n_prompts:
        raise ValueError(f"could not draw {n_prompts} distinct prompts (got {len(seen)}); ask for fewer")
    return rows


def demo_rows(path: Path = DEMO_POOL) -> list[dict[str, Any]]:
    """The demo pool's checkable prompts with their four right/wrong x short/long/confident/hedged candidates."""
    from annotate.pool import read_pool

    rows = []
    for row in read_pool(path).to_pylist():
        meta = json.loads(row["meta"] or "{}")
        if "verifier" in meta and meta.get("kind") in DEMO_KINDS:
            rows.append(row)
    return rows


def write_checkable_pool(path: Path, n_generated: int, seed: int = 0, demo: bool = True) -> dict[str, Any]:
    """The bench's pool (generated prompts, plus the demo's checkable ones) at `path`, validated as a pool; counts."""
    from annotate.pool import read_pool, write_pool

    generated = generate_pool(n_generated, seed)
    demo_part = demo_rows() if demo else []
    write_pool(generated + demo_part, path)
    read_pool(path)  # every verifier validated, as the app and the CLIs will read it
    return {"generated_prompts": n_generated, "demo_prompts": len({r["prompt_id"] for r in demo_part}),
            "candidates": len(generated) + len(demo_part)}  # fmt: skip


# -- simulated annotators ----------------------------------------------------------------------------------------
@dataclass
class Candidate:
    row: dict[str, Any]
    correct: bool  # passes the prompt's verifier
    confident: bool

    @property
    def text(self) -> str:
        return self.row["response"]


def candidates(pool: Path) -> dict[str, list[Candidate]]:
    """prompt_id -> its candidates, each verified once and read for tone."""
    from annotate.audit_features import text_features
    from annotate.pool import pool_verifiers, read_pool
    from annotate.verifiers import verify

    table = read_pool(pool)
    specs = pool_verifiers(table)
    rows = table.to_pylist()
    tone = text_features([r["response"] for r in rows])
    out: dict[str, list[Candidate]] = {}
    for row, (hedges, conf) in zip(rows, zip(tone["hedges"], tone["confidence"])):
        meta = json.loads(row["meta"] or "{}")
        # The audit's reading where the pool does not say: hedged when hedging outweighs confidence.
        confident = bool(meta["confident"]) if "confident" in meta else bool(hedges <= conf)
        out.setdefault(row["prompt_id"], []).append(
            Candidate(row, verify(specs[row["prompt_id"]], row["response"]), confident)
        )
    return out


def appeal(a: Candidate, b: Candidate) -> tuple[int, int]:
    """Each side's appeal to these annotators: +1 confident, +1 the longer of the two."""
    la, lb = len(a.text), len(b.text)
    return int(a.confident) + int(la > lb), int(b.confident) + int(lb > la)


def choose(a: Candidate, b: Candidate, rng: random.Random, bias: float) -> str:
    """'a' or 'b': by style with probability `bias`, else by correctness (module doc)."""
    by_style = rng.random() < bias
    if not by_style and a.correct != b.correct:
        return "a" if a.correct else "b"
    sa, sb = appeal(a, b)
    if sa != sb:
        return "a" if sa > sb else "b"
    return rng.choice("ab")


def _pairs(cands: list[Candidate], per_prompt: int, rng: random.Random) -> list[tuple[Candidate, Candidate]]:
    pairs = list(itertools.combinations(cands, 2))
    rng.shuffle(pairs)
    return [(a, b) if rng.random() < 0.5 else (b, a) for a, b in pairs[:per_prompt]]  # sides dealt at random


def simulate_votes(
    pool: Path, store: Path, *, bias: float = 0.7, pairs_per_prompt: int = 12, annotators: int = 3, seed: int = 0
) -> dict[str, Any]:
    """Votes of `annotators` simulated annotators on up to `pairs_per_prompt` pairs of each prompt of `pool`, written
    to `store`; returns what was planted and what came out (the wrong answer's win rate where it was the more
    appealing one should be close to `bias`)."""
    from annotate.schema import new_comparison
    from annotate.store import ComparisonStore

    rng = random.Random(seed)
    ns = uuid.uuid5(uuid.NAMESPACE_URL, "prefkit/bench/correct_vs_preferred")
    records, tally = [], {"votes": 0, "right_vs_wrong": 0, "wrong_won": 0, "wrong_appealing": 0,
                          "wrong_appealing_won": 0}  # fmt: skip
    for pid, cands in candidates(pool).items():
        for a, b in _pairs(cands, pairs_per_prompt, rng):
            choice = choose(a, b, rng, bias)
            who = f"sim-{rng.randrange(annotators) + 1}"
            cid = uuid.uuid5(ns, f"{seed}\0{bias}\0{pid}\0{a.row['response_id']}\0{b.row['response_id']}")
            records.append(new_comparison(
                comparison_id=str(cid), prompt_id=pid, prompt=a.row["prompt"], response_a_id=a.row["response_id"],
                response_a=a.text, source_a=a.row["source"], response_b_id=b.row["response_id"], response_b=b.text,
                source_b=b.row["source"], choice=choice, strength=2, annotator=who, left=rng.choice("ab"),
                session="bench:correct_vs_preferred",
            ))  # fmt: skip
            tally["votes"] += 1
            if a.correct != b.correct:
                wrong_is_a = not a.correct
                won = (choice == "a") == wrong_is_a
                sa, sb = appeal(a, b)
                tally["right_vs_wrong"] += 1
                tally["wrong_won"] += won
                if (sa > sb) == wrong_is_a and sa != sb:
                    tally["wrong_appealing"] += 1
                    tally["wrong_appealing_won"] += won
    written, _ = ComparisonStore(store).add_new(records)
    share = lambda k, n: tally[k] / tally[n] if tally[n] else None  # noqa: E731
    return tally | {
        "written": len(written),
        "bias": bias,
        "wrong_preferred": share("wrong_won", "right_vs_wrong"),
        "wrong_preferred_when_more_appealing": share("wrong_appealing_won", "wrong_appealing"),
    }


# -- the tiny model (--tiny) -------------------------------------------------------------------------------------
def save_tiny_policy(out: Path, pool: Path) -> str:
    """A word-level tokenizer over the pool's words (ChatML template) and a tiny Llama around it, saved to `out`:
    the smoke test's starting policy and reward-model body (tests/fixtures.py builds the model)."""
    from fixtures import save_tiny_model, word_tokenizer

    from annotate.pool import read_pool

    texts = []
    for row in read_pool(pool).to_pylist():
        texts += [m["content"] for m in row["prompt"]] + [row["response"]]
    words = sorted({w for t in texts for line in t.split("\n") for w in line.split(" ") if w})
    fast = word_tokenizer(["\n", "user", "assistant", "system", *words])
    # Untied output layer: with tied embeddings a random model greedily repeats its last prompt token (a newline),
    # so every answer would decode empty and the measurement paths would go unexercised.
    return save_tiny_model(out, fast, layers=1, hidden=32, heads=2, tie_word_embeddings=False)
