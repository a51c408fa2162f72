"""The one rendering path for untrusted text (model responses, prompts, source and annotator names).

Two layers, so that a mistake in one is caught by the other:

1. **Markdown without HTML.** markdown-it-py (CommonMark + GFM tables and strikethrough) with ``html`` off: raw
   HTML in the source is never passed through, it becomes escaped text. Our own render rules show images as a link
   (nothing loads), drop code-block classes, and show bidirectional control characters as visible badges instead
   of letting them reorder the text around them.
2. **An allowlist sanitizer.** The HTML from layer 1 goes through nh3 (Ammonia) with a short list of tags and
   attributes, http/https/mailto links only and ``rel="noopener noreferrer nofollow"`` on every link. Classes are
   dropped except our own two markers (``span.bidi``, ``p.empty-response``), which layer 1 never lets the source
   produce.

Wrappers that must keep their classes (``response_card``, ``render_conversation``) are built by our code *after*
sanitizing the untrusted part, so user content cannot imitate them. No gradio/torch imports here: this is pure
string work, testable and fast (one MarkdownIt instance, one Cleaner, built at import).
"""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Sequence
from typing import Any

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.token import Token

__all__ = [
    "RENDER_CSS",
    "render_conversation",
    "render_inline",
    "render_markdown",
    "response_card",
    "sanitize_html",
]

ALLOWED_TAGS = frozenset(
    {"p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "b", "i", "del", "s", "code", "pre",
     "blockquote", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td", "a", "span"}
)  # fmt: skip
# `class` is handled by ALLOWED_CLASSES (Ammonia wants it out of this map then); `rel` is set by the sanitizer.
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {"a": {"href", "title"}, "ol": {"start"}, "th": {"align"}, "td": {"align"}}
ALLOWED_CLASSES: dict[str, set[str]] = {"span": {"bidi"}, "p": {"empty-response"}}
URL_SCHEMES = frozenset({"http", "https", "mailto"})
LINK_REL = "noopener noreferrer nofollow"

# Directional embeddings/overrides/isolates and the implicit marks: they can make text read differently from how
# it is stored ("Trojan Source"), so they are shown, never applied. Zero-width characters are left alone.
BIDI_CHARS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
_BIDI_RE = re.compile(f"[{BIDI_CHARS}]")
_SCHEME_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.\-]*):")
_ALIGN_RE = re.compile(r"^text-align:(left|right|center)$")

EMPTY_HTML = '<p class="empty-response">(empty response)</p>'
EMPTY_TURN_HTML = '<p class="empty-response">(empty)</p>'
ROLE_LABELS = {"user": "User", "assistant": "Assistant (earlier turn)", "system": "System", "tool": "Tool"}
CARD_SIDES = ("a", "b")

RENDER_CSS = """
.response-card { border: 1px solid var(--border-color-primary, #d0d0d0); border-radius: 8px; overflow: hidden;
  margin: 4px 0; background: var(--background-fill-primary, #fff); }
.response-card .card-label { display: block; padding: 6px 12px; font-weight: 600; font-size: 0.9em;
  letter-spacing: 0.02em; background: var(--background-fill-secondary, #f0f0f0);
  border-bottom: 1px solid var(--border-color-primary, #d0d0d0); }
.response-card .card-body { padding: 8px 14px; overflow-wrap: anywhere; }
.conversation { background: var(--background-fill-secondary, #f7f7f7); border-radius: 8px; padding: 10px 14px; }
.conversation .turn-label { font-weight: 600; font-size: 0.9em; margin-bottom: 2px; }
.conversation .turn-body { overflow-wrap: anywhere; }
.conversation hr { margin: 8px 0; }
.response-card pre, .conversation pre { overflow: auto; white-space: pre; max-width: 100%; padding: 8px;
  border-radius: 4px; background: var(--background-fill-secondary, #f4f4f4); }
.response-card code, .conversation code { white-space: pre; }
.bidi { display: inline-block; padding: 0 3px; margin: 0 1px; border-radius: 3px; font-family: monospace;
  font-size: 0.8em; background: #fde68a; color: #7c2d12; border: 1px solid #f59e0b; }
.empty-response { font-style: italic; color: var(--body-text-color-subdued, #888); }
"""


def _bidi_badges(escaped: str) -> str:
    """Text that is already HTML-escaped -> the same with every bidi control shown as a badge (text context only)."""
    return _BIDI_RE.sub(lambda m: f'<span class="bidi">[U+{ord(m.group()):04X}]</span>', escaped)


def _bidi_plain(value: str) -> str:
    """For attribute values and leftovers: a marker with no markup, safe in any HTML context."""
    return _BIDI_RE.sub(lambda m: f"[U+{ord(m.group()):04X}]", value)


def _allowed_url(url: str) -> bool:
    # Relative URLs are refused too: they would point into the annotation app itself.
    m = _SCHEME_RE.match(url)
    return bool(m) and m.group(1).lower() in URL_SCHEMES


# -- layer 1: Markdown with html off and our own render rules --------------------------------------------------
def _text(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    return _bidi_badges(escapeHtml(tokens[idx].content))


def _code_inline(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    return f"<code>{_bidi_badges(escapeHtml(tokens[idx].content))}</code>"


def _code_block(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    # Fenced and indented code alike; the fence's info string is dropped (no class to carry).
    return f"<pre><code>{_bidi_badges(escapeHtml(tokens[idx].content))}</code></pre>\n"


def _image(self: Any, tokens: Sequence[Token], idx: int, options: Any, env: Any) -> str:
    # Never an <img>: a remote image is a tracking pixel. Show what it is and let the annotator follow it if needed.
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env)
    label = _bidi_badges(escapeHtml(f"[image: {alt}]" if alt else "[image]"))
    src = str(token.attrGet("src") or "")
    if not _allowed_url(src):
        return label
    return f'<a href="{escapeHtml(src)}">{label}</a>'


def _fix_attrs(state: Any) -> None:
    """Core rule: no bidi controls inside attribute values (e.g. a link title), and table alignment as `align`."""
    stack = list(state.tokens)
    while stack:
        tok = stack.pop()
        if tok.children:
            stack.extend(tok.children)
        if not tok.attrs:
            continue
        style = tok.attrs.pop("style", None)
        if style is not None and tok.type in ("th_open", "td_open"):
            m = _ALIGN_RE.match(str(style).replace(" ", ""))
            if m:
                tok.attrs["align"] = m.group(1)
        for key, value in tok.attrs.items():
            if isinstance(value, str):
                tok.attrs[key] = _bidi_plain(value)


def _build_markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.enable(["table", "strikethrough"])
    md.add_render_rule("text", _text)
    md.add_render_rule("code_inline", _code_inline)
    md.add_render_rule("code_block", _code_block)
    md.add_render_rule("fence", _code_block)
    md.add_render_rule("image", _image)
    md.core.ruler.push("prefkit_fix_attrs", _fix_attrs)
    return md


_MD = _build_markdown()

# -- layer 2: the allowlist sanitizer --------------------------------------------------------------------------
_CLEANER = nh3.Cleaner(
    tags=set(ALLOWED_TAGS),
    clean_content_tags={"script", "style"},
    attributes={tag: set(attrs) for tag, attrs in ALLOWED_ATTRIBUTES.items()},
    link_rel=LINK_REL,
    url_schemes=set(URL_SCHEMES),
    url_relative="deny",
    allowed_classes={tag: set(classes) for tag, classes in ALLOWED_CLASSES.items()},
    strip_comments=True,
)


def sanitize_html(html_text: str) -> str:
    """Allowlist-sanitize HTML that our code assembled from untrusted parts (e.g. dashboard findings).

    Keeps only the tags/attributes listed in this module, http/https/mailto links (with rel nofollow etc.) and the
    two marker classes; any bidi control still present is replaced by a plain-text marker.
    """
    return _bidi_plain(_CLEANER.clean(html_text))


def render_markdown(text: str) -> str:
    """Untrusted Markdown -> safe HTML (see the module docstring for the two layers)."""
    if not text or not text.strip():
        return EMPTY_HTML
    return _render_cached(text) if len(text) <= _CACHE_MAX_CHARS else _render_nonempty(text)


def _render_nonempty(text: str) -> str:
    out = sanitize_html(_MD.render(text))
    if not out.strip():
        # Source that renders to nothing (e.g. only a link reference definition): show it verbatim, not a blank.
        out = sanitize_html(f"<pre><code>{_bidi_badges(escapeHtml(text))}</code></pre>")
    return out


# The same prompt/response is shown to many annotators (and again on undo) and parsing is the main cost; huge
# texts are not cached so the cache stays small (at most ~1024 x 16k chars of source plus the HTML).
_CACHE_MAX_CHARS = 16_384
_render_cached = functools.lru_cache(maxsize=1024)(_render_nonempty)


def render_inline(text: str) -> str:
    """Untrusted plain text (a name, a source, a table cell) -> escaped HTML for a text context. No Markdown."""
    return _bidi_badges(html.escape(str(text), quote=True))


def response_card(label: str, text: str, side: str) -> str:
    """A framed response: our label bar outside the body, the sanitized Markdown inside it.

    The body has no classes except the two markers, so nothing in it can pose as a `card-label`.
    """
    if side not in CARD_SIDES:
        raise ValueError(f"side must be one of {CARD_SIDES}, got {side!r}")
    return (
        f'<div class="response-card" data-side="{side}"><div class="card-label">{render_inline(label)}</div>'
        f'<div class="card-body">{render_markdown(text)}</div></div>'
    )


def _render_turn(text: str) -> str:
    return render_markdown(text) if text.strip() else EMPTY_TURN_HTML


def render_conversation(messages: list[dict[str, str]]) -> str:
    """A multi-turn prompt: each turn labelled by role (earlier assistant turns say so), separated by <hr>."""
    turns = []
    for m in messages:
        role = str(m.get("role") or "")
        label = html.escape(ROLE_LABELS[role]) if role in ROLE_LABELS else render_inline(role or "(no role)")
        turns.append(
            f'<div class="turn"><div class="turn-label">{label}</div>'
            f'<div class="turn-body">{_render_turn(str(m.get("content") or ""))}</div></div>'
        )
    return f'<div class="conversation">{"<hr>".join(turns)}</div>'
