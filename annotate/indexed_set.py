"""A set of ints with O(1) add, remove, membership and uniform random choice (a list plus positions).

The sampler keeps its buckets of open pairs in these, so picking a pair never builds a list of the pool.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator, Sequence

DRAWS = 32  # random draws before a rejection sampler falls back to a scan


class IndexedSet:
    __slots__ = ("items", "_pos")

    def __init__(self, items: Iterable[int] = ()):
        self.items: list[int] = list(dict.fromkeys(items))
        self._pos: dict[int, int] = {x: k for k, x in enumerate(self.items)}

    def add(self, x: int) -> None:
        if x not in self._pos:
            self._pos[x] = len(self.items)
            self.items.append(x)

    def discard(self, x: int) -> None:
        k = self._pos.pop(x, None)
        if k is None:
            return
        last = self.items.pop()
        if k < len(self.items):  # fill the hole with the former last element
            self.items[k] = last
            self._pos[last] = k

    def choice(self, rng: random.Random) -> int:
        return self.items[rng.randrange(len(self.items))]

    def __contains__(self, x: object) -> bool:
        return x in self._pos

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[int]:
        return iter(self.items)

    def __repr__(self) -> str:
        return f"IndexedSet({self.items!r})"


def pick_unseen(items: Sequence[int], seen: set[int], rng: random.Random, draws: int = DRAWS) -> int | None:
    """A uniformly random element of `items` not in `seen`, or None if there is none.

    Rejection sampling first (`draws` random draws, O(1) each); only when all of them hit `seen` (so most of
    `items` is seen) does it fall back to listing the unseen elements, O(len(items)).
    """
    n = len(items)
    if not n:
        return None
    for _ in range(draws):
        x = items[rng.randrange(n)]
        if x not in seen:
            return x
    return scan_unseen(items, seen, rng)


def scan_unseen(items: Sequence[int], seen: set[int], rng: random.Random) -> int | None:
    """pick_unseen's fallback: list the unseen elements, O(len(items)), and choose one."""
    rest = [x for x in items if x not in seen]
    return rng.choice(rest) if rest else None


def pick_weighted(groups: Sequence[Sequence[int]], accept: Callable[[int], bool], rng: random.Random) -> int | None:
    """Rejection sampling over the union of disjoint `groups` (uniform over elements): at most DRAWS draws."""
    total = sum(len(g) for g in groups)
    for _ in range(DRAWS if total else 0):
        r = rng.randrange(total)
        for g in groups:
            if r < len(g):
                if accept(x := g[r]):
                    return x
                break
            r -= len(g)
    return None
