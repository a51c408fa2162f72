"""Surface features of a response that evaluators are known to reward for their own sake.

Length (characters and words), hedging and confidence markers, and Markdown formatting (headers, list items,
bold), the style covariates of Chatbot Arena's style control (LMSYS, "Does style matter?", 2024).

Markers are counted as whole words or phrases, case-insensitive, and reported per 100 words so that a longer
answer does not score higher merely for being longer (length has its own covariate).

Defined once, here, for everything that asks "is it the style?": the audit's bias regressions (`pair_features`), the
length ruler's style-only model (annotate.audit_ruler) and the reward model's `--length-debias poe` bias expert
(`style_vectors` / `style_differences`, through the ruler's fitted model).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

# Hedging: phrases that lower the stated certainty of a claim.
HEDGE_MARKERS = (
    "might",
    "may",
    "perhaps",
    "possibly",
    "probably",
    "likely",
    "unlikely",
    "seems",
    "appears",
    "i think",
    "i believe",
    "i guess",
    "not sure",
    "not certain",
    "it depends",
    "could be",
    "generally",
    "typically",
    "usually",
    "approximately",
    "roughly",
    "as far as i know",
    "to my knowledge",
)
# Confidence: phrases that assert certainty.
CONFIDENCE_MARKERS = (
    "definitely",
    "certainly",
    "clearly",
    "obviously",
    "undoubtedly",
    "absolutely",
    "always",
    "never",
    "of course",
    "without a doubt",
    "no doubt",
    "guaranteed",
    "for sure",
    "the answer is",
    "in fact",
    "100%",
)


def _marker_regex(markers: tuple[str, ...]) -> str:
    # Longest first so "not sure" wins over "sure"; a word boundary only where the marker starts or ends with a
    # word character ("100%" has none after the %). RE2 syntax: pyarrow counts matches in C++.
    def bounded(m: str) -> str:
        return (r"\b" if m[0].isalnum() else "") + re.escape(m) + (r"\b" if m[-1].isalnum() else "")

    return "|".join(bounded(m) for m in sorted(markers, key=len, reverse=True))


HEDGE_RE = _marker_regex(HEDGE_MARKERS)
CONFIDENCE_RE = _marker_regex(CONFIDENCE_MARKERS)
HEADER_RE = r"(?m)^[ \t]{0,3}#{1,6}[ \t]+\S"
LIST_RE = r"(?m)^[ \t]*(?:[-*+]|\d+[.)])[ \t]+\S"
BOLD_RE = r"\*\*[^*\n]+\*\*|__[^_\n]+__"
WORD_RE = r"\S+"

FEATURES = ("chars", "words", "hedges", "confidence", "headers", "lists", "bold")


def text_features(texts: pd.Series | list[str]) -> pd.DataFrame:
    """One row per text: chars, words, hedges and confidence (per 100 words), headers, lists, bold (counts)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pa.array(pd.Series(texts).fillna("").astype(str).tolist(), type=pa.large_string())

    def count(pattern: str, ignore_case: bool = False) -> np.ndarray:
        return pc.count_substring_regex(arr, pattern, ignore_case=ignore_case).to_numpy().astype(float)

    words = count(WORD_RE)
    per100 = 100.0 / np.maximum(words, 1.0)
    return pd.DataFrame(
        {
            "chars": pc.utf8_length(arr).to_numpy().astype(float),  # code points, as Python's len()
            "words": words,
            "hedges": count(HEDGE_RE, ignore_case=True) * per100,
            "confidence": count(CONFIDENCE_RE, ignore_case=True) * per100,
            "headers": count(HEADER_RE),
            "lists": count(LIST_RE),
            "bold": count(BOLD_RE),
        }
    )


def _features_once(texts: pd.Series) -> np.ndarray:
    """text_features of every text as an (n, len(FEATURES)) array, each distinct text analysed once."""
    codes, uniques = pd.factorize(texts.fillna("").astype(str))
    return text_features(list(uniques)).to_numpy()[codes]


def pair_features(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Features of response_a and response_b of every comparison, each text analysed once however often shown."""
    feats = _features_once(pd.concat([df["response_a"], df["response_b"]], ignore_index=True))
    n = len(df)
    fa = pd.DataFrame(feats[:n], columns=FEATURES, index=df.index)
    fb = pd.DataFrame(feats[n:], columns=FEATURES, index=df.index)
    return fa, fb


# -- style vectors: the features a style-only model reads ----------------------------------------------------------
# Words are left out (they move with characters); counts and length enter as log(1 + x), so that a difference of two
# responses' vectors is a relative difference (300 vs 150 characters weighs as 3000 vs 1500), in the spirit of
# Chatbot Arena's style control, which normalises each difference by the sum. Marker rates are already per 100 words.
STYLE_FEATURES = ("length", "headers", "lists", "bold", "hedges", "confidence")
_LOGGED = {"length": "chars", "headers": "headers", "lists": "lists", "bold": "bold"}


def _style_from_features(feats: np.ndarray) -> np.ndarray:
    col = dict(zip(FEATURES, feats.T))
    return np.column_stack([np.log1p(col[_LOGGED[f]]) if f in _LOGGED else col[f] for f in STYLE_FEATURES])


def style_vectors(texts: pd.Series | list[str]) -> np.ndarray:
    """One row per text, columns STYLE_FEATURES: log(1 + characters), log(1 + count) of Markdown headers, list items
    and bold spans, then hedging and confidence markers per 100 words."""
    return _style_from_features(_features_once(pd.Series(list(texts), dtype=object)))


def style_differences(first: list[str], second: list[str]) -> np.ndarray:
    """style_vectors(first) - style_vectors(second), row by row: (n, len(STYLE_FEATURES)), each text analysed once."""
    if len(first) != len(second):
        raise ValueError(f"style_differences: {len(first)} first responses but {len(second)} second")
    both = style_vectors(list(first) + list(second))
    return both[: len(first)] - both[len(first) :]
