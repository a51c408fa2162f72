"""`python rlhf/train.py judge`: an AI judge as one more annotator, writing its verdicts into the store.

The model reads a prompt template holding the request and two responses, "A" shown first and "B" second, and is
asked for one letter. The verdict is read from its next-token log-probabilities rather than from sampled text:

    p_first = P(A) / (P(A) + P(B)) = sigmoid(logsumexp(l_A) - logsumexp(l_B))

where l_A are the logits of the tokens that spell "A" alone ("A", " A") at the first answer position (likewise
B). That never fails to parse, and the probability says how sure the judge was. Every pair is judged in both
orders, and each verdict is an ordinary vote (annotate.schema) written through the store as annotator
`judge:<model>`: `left` is the response shown first, `choice` the side picked, `strength` from the confidence
|2 p_first - 1| (< 1/3 slight, < 2/3 clear, else much), `rationale` the judge's figures as JSON
(annotate.judge_votes). The audit then treats the judge like any annotator, and a judge that follows the position
instead of the content shows up as a flip across the two orders.

Pairs are the app's: every unordered pair of candidates of one prompt, a/b by response id (annotate.sampler);
`--pairs N` judges a seeded sample of N of them. Ids derive from the judge, the template and the pair, so a rerun
(or one resumed after a kill: votes are written every `--write-every` pairs) adds only what is missing. The
template is an option, hence a recipe key (recipes/judge.yaml); it must hold {prompt}, {first} and {second}.
"""

from __future__ import annotations

import hashlib
import inspect
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from annotate.errors import UsageError
from annotate.judge_votes import JUDGE_PREFIX, summary, verdict_rationale
from rlhf.config import parse_config

if TYPE_CHECKING:
    import pyarrow as pa
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_TEMPLATE = """\
You are judging two answers to the same request. The better answer is correct, answers what was asked, and is \
no longer than it needs to be. Ignore the order in which the answers are shown.

[Request]
{prompt}

[Answer A]
{first}

[Answer B]
{second}

Which answer is better? Reply with a single letter: A or B."""
PLACEHOLDERS = ("{prompt}", "{first}", "{second}")
LETTERS = ("A", "B")


@dataclass
class JudgeArgs:
    """Ask a model which of two responses is better, in both orders, and store each verdict as a vote."""

    pool: str | None = field(default=None, metadata={"help": "candidate pool (JSONL, CSV or Parquet); required"})
    store: str | None = field(default=None, metadata={"help": "comparison store the votes go into; required"})
    model: str = field(default="default", metadata={"help": "Hub id, local checkpoint, or 'default' (SmolLM2-135M)"})
    pairs: int = field(default=0, metadata={"help": "judge a seeded sample of this many pairs; 0 = every pair"})
    template: str = field(
        default="",
        metadata={"help": "judge prompt with {prompt}, {first}, {second}, or a file holding it; empty = built-in"},
    )
    annotator: str = field(default="", metadata={"help": "annotator name to record; empty = judge:<model>"})
    batch_size: int = field(default=8, metadata={"help": "judge prompts per forward pass"})
    max_length: int = field(default=2048, metadata={"help": "judge prompts longer than this (tokens) are skipped"})
    write_every: int = field(default=64, metadata={"help": "pairs per store commit (a killed run keeps these)"})
    seed: int = field(default=0, metadata={"help": "seed for the --pairs sample"})
    device: str = field(
        default="auto", metadata={"help": "auto (GPU when present), cpu or cuda", "choices": ["auto", "cpu", "cuda"]}
    )


# -- options -------------------------------------------------------------------------------------------------------
def load_template(value: str) -> str:
    """The template text: built-in when empty, read from a file when `value` names one; placeholders checked."""
    text = value or DEFAULT_TEMPLATE
    if "\n" not in text and len(text) < 4096 and Path(text).expanduser().is_file():
        text = Path(text).expanduser().read_text(encoding="utf-8")
    missing = [p for p in PLACEHOLDERS if p not in text]
    if missing:
        raise UsageError(f"--template: missing {', '.join(missing)} (it needs {', '.join(PLACEHOLDERS)})")
    return text


def judge_name(model: str) -> str:
    """`judge:<model>`: the Hub name for the bundled default, a local checkpoint's folder name, else the id given."""
    from rlhf.models import DEFAULT_MODEL, DEFAULT_MODEL_NAME

    if model in (DEFAULT_MODEL, "", DEFAULT_MODEL_NAME):
        return JUDGE_PREFIX + DEFAULT_MODEL_NAME
    path = Path(model).expanduser()
    return JUDGE_PREFIX + (path.resolve().name if path.exists() else model.rstrip("/"))


def check_inputs(cfg: JudgeArgs) -> pa.Table:
    """Everything that can be wrong with the command line, checked before a model is loaded; returns the pool."""
    from annotate.pool import read_pool
    from annotate.store import StoreError, prepare

    for name in ("pool", "store"):
        if not getattr(cfg, name):
            raise UsageError(f"judge needs --{name}")
    for name in ("batch_size", "max_length", "write_every"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')}: expected at least 1, got {getattr(cfg, name)}")
    if cfg.pairs < 0:
        raise UsageError(f"--pairs: expected 0 (every pair) or more, got {cfg.pairs}")
    load_template(cfg.template)
    try:
        prepare(cfg.store, create=False)  # exists and is a store; nothing is created
    except FileNotFoundError:
        how = "`python -m annotate import POOL --format pool --store DIR` makes one"
        raise UsageError(f"--store {cfg.store}: no such store ({how})") from None
    except StoreError as e:
        raise UsageError(f"--store {e}") from None
    try:
        return read_pool(cfg.pool)
    except FileNotFoundError as e:
        raise UsageError(f"--pool {e}") from None


# -- the pairs and their prompts -------------------------------------------------------------------------------------
def plan_pairs(pool: pa.Table, n: int, seed: int) -> tuple[list[tuple[str, Any, Any]], dict[str, list]]:
    """([(prompt_id, a, b)], prompts by id): the app's pairs (annotate.sampler), all or a seeded sample of `n`."""
    from annotate.sampler import PairSampler

    sampler = PairSampler(pool)
    pairs = [(pid, a, b) for pid, a, b, _ in sampler.pairs]
    if 0 < n < len(pairs):
        keep = sorted(random.Random(seed).sample(range(len(pairs)), n))
        pairs = [pairs[i] for i in keep]
    return pairs, sampler.prompts


def request_text(messages: list[dict[str, str]]) -> str:
    """The conversation to be answered, as the template's {prompt}: one user turn as it is, more as a transcript."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def fill(template: str, prompt: str, first: str, second: str) -> str:
    # Plain replacement, not str.format: responses hold braces (code, JSON) that format would choke on. The
    # responses go in last so that a response quoting "{second}" is never itself replaced.
    text = template.replace("{prompt}", "\0P").replace("{first}", "\0F").replace("{second}", "\0S")
    return (
        text.replace("\0P", prompt)
        .replace("\0F", first or "(empty response)")
        .replace("\0S", second or "(empty response)")
    )


# -- reading the verdict ---------------------------------------------------------------------------------------------
def letter_ids(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The single tokens that spell "A" and those that spell "B" (with and without a leading space)."""
    out = []
    for letter in LETTERS:
        ids = set()
        for text in (letter, " " + letter):
            toks = tokenizer.encode(text, add_special_tokens=False)
            if len(toks) == 1 and toks[0] != tokenizer.unk_token_id:
                ids.add(toks[0])
        if not ids:
            raise UsageError(f"--model: its tokenizer has no single token for {letter!r}; it cannot answer A or B")
        out.append(sorted(ids))
    return out[0], out[1]


def first_letter_probs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    letters: tuple[list[int], list[int]],
    batch_size: int,
    on_batch: Any = None,
) -> list[tuple[float, float]]:
    """(p_first, letter mass) per judge prompt: P(A) / (P(A) + P(B)) at the first answer token, and P(A) + P(B)."""
    import torch

    from rlhf.sampling import left_pad, render_prompt

    device = next(model.parameters()).device
    # Only the last position's logits are needed; a (B, L, V) tensor over a 49k vocabulary is most of the cost.
    keep = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(model.forward).parameters else {}
    ids = [tokenizer(render_prompt(tokenizer, [{"role": "user", "content": t}]), add_special_tokens=False)["input_ids"]
           for t in texts]  # fmt: skip
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths per batch: little padding
    a_ids, b_ids = (torch.tensor(x, device=device) for x in letters)
    out: list[tuple[float, float]] = [(0.5, 0.0)] * len(ids)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            enc = {k: v.to(device) for k, v in left_pad([ids[i] for i in chunk], pad).items()}
            # Left padding shifts positions unless they are given: count them from each row's first real token.
            positions = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # (B, L)
            logits = model(**enc, position_ids=positions, **keep).logits[:, -1, :].float()  # (B, V): the next token
            logp = torch.log_softmax(logits, dim=-1)
            la, lb = logp[:, a_ids].logsumexp(-1), logp[:, b_ids].logsumexp(-1)  # (B,)
            p_first = torch.sigmoid(la - lb)
            mass = la.exp() + lb.exp()
            for i, p, m in zip(chunk, p_first.tolist(), mass.tolist()):
                out[i] = (p, m)
            if on_batch is not None:
                on_batch(len(chunk))
    return out


def strength_of(p_first: float) -> int:
    """1 slight, 2 clear, 3 much, by the confidence |2 p - 1| in thirds."""
    confidence = abs(2.0 * p_first - 1.0)
    return 1 if confidence < 1 / 3 else 2 if confidence < 2 / 3 else 3


# -- votes -----------------------------------------------------------------------------------------------------------
def vote_id(pair: tuple[str, Any, Any], prompt: list, left: str, who: str, tid: str) -> str:
    """A verdict's comparison_id: judge, template, pair and order, never the run (a rerun adds nothing twice)."""
    from annotate.schema import comparison_id_for

    _, a, b = pair
    return comparison_id_for(
        f"judge:{tid}:{left}", who, prompt, f"{a.response_id}\0{a.text}", f"{b.response_id}\0{b.text}"
    )


def vote(pair: tuple[str, Any, Any], prompt: list, left: str, p_first: float, mass: float, *, who: str, tid: str,
         session: str) -> dict:  # fmt: skip
    """One verdict as a comparison record: `left` (the side shown first) wins when p_first > 1/2."""
    from annotate.schema import new_comparison

    pid, a, b = pair
    choice = left if p_first > 0.5 else ("b" if left == "a" else "a") if p_first < 0.5 else "tie"
    return new_comparison(
        comparison_id=vote_id(pair, prompt, left, who, tid), prompt_id=pid, prompt=prompt,
        response_a_id=a.response_id, response_a=a.text, source_a=a.source, response_b_id=b.response_id,
        response_b=b.text, source_b=b.source, left=left, choice=choice,
        strength=None if choice == "tie" else strength_of(p_first), annotator=who, session=session,
        rationale=verdict_rationale(p_first, mass, tid),
    )  # fmt: skip


def judge(cfg: JudgeArgs, pool: pa.Table) -> dict[str, Any]:
    """Judge the planned pairs in both orders and write the votes; returns the run's figures."""
    from annotate.store import read_table

    template = load_template(cfg.template)
    tid = hashlib.sha1(template.encode()).hexdigest()[:12]
    who = cfg.annotator or judge_name(cfg.model)
    pairs, prompts = plan_pairs(pool, cfg.pairs, cfg.seed)
    have = set(read_table(cfg.store).column("comparison_id").to_pylist())
    todo = [p for p in pairs if not all(vote_id(p, prompts[p[0]], left, who, tid) in have for left in "ab")]
    print(f"[judge] {who}: {len(pairs)} pairs planned, {len(pairs) - len(todo)} judged before", flush=True)
    started = time.perf_counter()
    counts = run_judge(cfg, todo, prompts, template, who=who, tid=tid) if todo else {}  # no model when done
    figures = summary(read_table(cfg.store), who)
    return {"annotator": who, "pairs": len(pairs), "written": 0, "already_there": 0, "skipped_too_long": 0,
            **counts, "seconds": time.perf_counter() - started, **figures}  # fmt: skip


def run_judge(cfg: JudgeArgs, todo: list, prompts: dict[str, list], template: str, *, who: str, tid: str) -> dict:
    """Load the model, judge `todo` in both orders, write a commit every `write_every` pairs; returns the counts."""
    import torch
    from tqdm.auto import tqdm

    from annotate.store import ComparisonStore
    from rlhf.generate import resolve_device
    from rlhf.models import load_causal_lm, load_tokenizer

    session = f"{JUDGE_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-{tid[:6]}"
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(cfg.model)
    letters = letter_ids(tokenizer)
    model = load_causal_lm(cfg.model, dtype=torch.bfloat16 if device.startswith("cuda") else torch.float32,
                           device=device).eval()  # fmt: skip
    limit = min(cfg.max_length, getattr(model.config, "max_position_embeddings", None) or cfg.max_length)
    counts = {"written": 0, "already_there": 0, "skipped_too_long": 0}
    bar = tqdm(total=2 * len(todo), desc="judge", unit="verdict")
    with ComparisonStore(cfg.store) as store:
        for start in range(0, len(todo), cfg.write_every):
            texts, keep = [], []
            for pid, a, b in todo[start : start + cfg.write_every]:
                request = request_text(prompts[pid])
                both = [fill(template, request, a.text, b.text), fill(template, request, b.text, a.text)]
                if max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in both) + 16 > limit:
                    counts["skipped_too_long"] += 1  # 16: room for the chat template's own tokens
                    bar.update(2)
                    continue
                texts += both
                keep.append((pid, a, b))
            probs = first_letter_probs(model, tokenizer, texts, letters, cfg.batch_size, on_batch=bar.update)
            records = [
                vote(pair, prompts[pair[0]], left, *probs[2 * k + j], who=who, tid=tid, session=session)
                for k, pair in enumerate(keep)
                for j, left in enumerate("ab")  # texts hold each pair as (a first, b first)
            ]
            new, old = store.add_new(records)  # one commit per chunk, idempotent by id (as imports write)
            counts["written"] += len(new)
            counts["already_there"] += old
    bar.close()
    return counts


def main(argv: list[str] | None = None) -> int:
    cfg = parse_config(JudgeArgs, argv, prog="python rlhf/train.py judge")
    pool = check_inputs(cfg)
    r = judge(cfg, pool)
    print(
        f"[judge] {r['written']} votes by {r['annotator']} into {cfg.store} ({r['already_there']} already there, "
        f"{r['skipped_too_long']} pairs over --max-length) in {r['seconds']:.1f} s | pairs judged both ways "
        f"{r['pairs_both_orders']}: flip rate {r['flip_rate']:.2f}, confidence over both orders "
        f"{r['mean_confidence']:.2f}"
    )
    return 0
