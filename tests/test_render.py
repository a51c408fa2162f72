"""annotate.render: untrusted Markdown -> safe HTML. Real markdown-it-py and nh3; outputs walked with html.parser."""

import subprocess
import sys
from html.parser import HTMLParser

import pytest

from annotate.render import (
    BIDI_CHARS,
    EMPTY_HTML,
    RENDER_CSS,
    render_conversation,
    render_inline,
    render_markdown,
    response_card,
    sanitize_html,
)

# The allowlist as the spec states it, written out here so a loosened module constant fails the tests.
TAGS = {"p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "b", "i", "del", "s", "code", "pre",
        "blockquote", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td", "a", "span"}  # fmt: skip
ATTRS = {"a": {"href", "title", "rel"}, "ol": {"start"}, "th": {"align"}, "td": {"align"}, "span": {"class"},
         "p": {"class"}}  # fmt: skip
CLASS_VALUES = {"span": {"bidi"}, "p": {"empty-response"}}
FORBIDDEN_TAGS = {"img", "form", "input", "div", "svg", "iframe", "script", "style", "button", "object", "embed"}
FORBIDDEN_ATTRS = {"style", "id", "autofocus", "src", "srcdoc", "action", "formaction"}
REL = "noopener noreferrer nofollow"

HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>",
    "<iframe src=javascript:alert(1)>",
    "[click](javascript:alert(1))",
    "[x](data:text/html;base64,PHNjcmlwdD4=)",
    'Looks harmless ``<div style="position:fixed;top:0;left:0;width:100%;height:100%;z-index:99999">x</div>` end.',
    '```a`b\n<div style="position:fixed">x</div>\n',
    '<form action="https://evil.example"><button id="vote-a">1</button></form>',
    "<input autofocus onfocus=alert(1)>",
    "![tracker](https://evil.example/pixel.png)",
    "abc\u202eevil\u202cdef",
    "- item\n\n      <div>code</div>\n",
    "   \n\t ",
    "",
    # a few more of the same kind
    "<JaVaScRiPt:alert(1)> [a](JAVASCRIPT:alert(1)) [b](  javascript:alert(1) ) [c](vbscript:x) [d](file:///etc/passwd)",
    '[t](https://ok.example "x\\" onmouseover=\\"alert(1)")',
    "<!-- <img src=x onerror=alert(1)> -->",
    '<a href="javascript:alert(1)">raw</a> <span class="card-label" style="color:red">x</span>',
    "![x](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+) ![y](javascript:alert(1))",
    "| a | <b onclick=x>b</b> |\n|---|---|\n| <img src=x> | [z](javascript:1) |",
    "~~~\n</code></pre><img src=x onerror=alert(1)>\n~~~",
    "`</code><script>alert(1)</script>`",
    "&lt;script&gt;alert(1)&lt;/script&gt; &#60;img src=x onerror=alert(1)&#62;",
]


class Walker(HTMLParser):
    """Every start tag with its attributes, and the visible text (character references decoded)."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text_parts: list[str] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text_parts.append(data)

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    def with_class(self, cls: str) -> list[tuple[str, dict[str, str | None]]]:
        return [(t, a) for t, a in self.tags if cls in (a.get("class") or "").split()]


def assert_safe_fragment(html: str) -> Walker:
    """The output holds only allowlisted tags/attributes/classes, and links go to http(s)/mailto only."""
    w = Walker(html)
    for tag, attrs in w.tags:
        assert tag in TAGS, (tag, html)
        assert tag not in FORBIDDEN_TAGS, html
        for name, value in attrs.items():
            assert name in ATTRS.get(tag, set()), (tag, name, html)
            assert name not in FORBIDDEN_ATTRS and not name.startswith("on"), (name, html)
            if name == "class":
                assert set((value or "").split()) <= CLASS_VALUES[tag], (tag, value, html)
            if name == "href":
                assert (value or "").lower().startswith(("http://", "https://", "mailto:")), html
        if tag == "a":
            assert attrs.get("rel") == REL, html
    lowered = html.lower()
    for needle in ("<img", "<script", "<svg", "<iframe", "<form", "<input", "<div", "<style", "<button"):
        assert needle not in lowered, (needle, html)  # as text these appear escaped (&lt;img ...), never raw
    assert not any(ch in html for ch in BIDI_CHARS), html
    return w


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_markdown_is_inert(text):
    out = render_markdown(text)
    w = assert_safe_fragment(out)
    for _, attrs in w.tags:
        assert not any("javascript" in (v or "").lower() or "data:" in (v or "").lower() for v in attrs.values())


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_response_card_body_is_inert(text):
    card = response_card("Response A", text, "a")
    body = render_markdown(text)
    assert card == (
        '<div class="response-card" data-side="a"><div class="card-label">Response A</div>'
        f'<div class="card-body">{body}</div></div>'
    )
    w = Walker(card)
    divs = [a for t, a in w.tags if t == "div"]
    assert [d.get("class") for d in divs] == ["response-card", "card-label", "card-body"]
    assert len(w.with_class("card-label")) == 1
    assert_safe_fragment(body)


def test_code_span_and_fence_bypasses_show_raw_html_as_text():
    w = Walker(render_markdown(HOSTILE[6]))
    assert '<div style="position:fixed;top:0' in w.text  # the attack is visible as characters, not live
    w = Walker(render_markdown(HOSTILE[7]))
    assert '<div style="position:fixed">x</div>' in w.text


def test_html_in_indented_code_inside_list_item_is_literal_once_escaped():
    out = render_markdown("- item\n\n      <div>code</div>\n")
    assert "<pre><code>&lt;div&gt;code&lt;/div&gt;" in out
    assert "&amp;" not in out
    assert "<div>code</div>" in Walker(out).text


def test_fenced_python_keeps_html_as_text_exactly_once_escaped():
    src = 'print("<b>ok</b>")'
    out = render_markdown(f"```python\n{src}\n```")
    assert out.count("&lt;b&gt;") == 1 and out.count("&lt;/b&gt;") == 1
    assert "&amp;lt;" not in out and "<b>" not in out
    w = Walker(out)
    assert [t for t, _ in w.tags] == ["pre", "code"]
    assert w.text.strip() == src


def test_bold_emphasis_strike_headings_lists():
    w = assert_safe_fragment(render_markdown("# Title\n\n**bold** *it* ~~gone~~\n\n3. three\n4. four\n\n> quote"))
    tags = [t for t, _ in w.tags]
    for tag in ("h1", "strong", "em", "s", "ol", "li", "blockquote"):
        assert tag in tags
    assert dict(w.tags)["ol"] == {"start": "3"}


def test_tables_render_with_align_not_style():
    out = render_markdown("| left | right |\n|:-----|------:|\n| 1 | 2 |")
    w = assert_safe_fragment(out)
    tags = [t for t, _ in w.tags]
    for tag in ("table", "thead", "tbody", "tr", "th", "td"):
        assert tag in tags
    assert [a.get("align") for t, a in w.tags if t in ("th", "td")] == ["left", "right", "left", "right"]


def test_links_get_rel_and_only_allowed_schemes_keep_href():
    out = render_markdown("[site](https://example.com/a?b=1&c=2) [mail](mailto:x@example.com) [rel](/logout)")
    w = assert_safe_fragment(out)
    links = [a for t, a in w.tags if t == "a"]
    assert [a.get("href") for a in links] == ["https://example.com/a?b=1&c=2", "mailto:x@example.com", None]
    assert all(a["rel"] == REL for a in links)
    assert "rel" in w.text  # a refused link keeps its text


def test_javascript_and_data_links_lose_the_link_keep_the_text():
    for text in ("[click](javascript:alert(1))", "[x](data:text/html;base64,PHNjcmlwdD4=)"):
        w = assert_safe_fragment(render_markdown(text))
        assert not any(a.get("href") for t, a in w.tags if t == "a")
        assert text[1] in w.text


def test_remote_image_becomes_a_link_never_an_img():
    out = render_markdown("![tracker](https://evil.example/pixel.png)")
    w = assert_safe_fragment(out)
    assert "img" not in [t for t, _ in w.tags]
    assert [a.get("href") for t, a in w.tags if t == "a"] == ["https://evil.example/pixel.png"]
    assert "[image: tracker]" in w.text


def test_image_with_disallowed_scheme_is_plain_text():
    w = assert_safe_fragment(render_markdown("![pic](data:image/png;base64,AAAA) ![](data:image/gif;base64,R0lG)"))
    assert [t for t, _ in w.tags] == ["p"]
    assert w.text == "[image: pic] [image]\n"
    w = assert_safe_fragment(render_markdown("![](javascript:alert(1)) ![](/local.png)"))
    assert not any(a.get("href") for _, a in w.tags)  # not a link at all, or a link without a target


def test_bidi_controls_are_visible_markers():
    out = render_markdown("abc\u202eevil\u202cdef")
    w = assert_safe_fragment(out)
    assert "\u202e" not in out and "\u202c" not in out
    badges = w.with_class("bidi")
    assert [t for t, _ in badges] == ["span", "span"]
    assert w.text == "abc[U+202E]evil[U+202C]def\n"


@pytest.mark.parametrize("ch", list(BIDI_CHARS))
def test_every_bidi_control_is_shown_in_every_context(ch):
    code = f"U+{ord(ch):04X}"
    texts = [
        f"a{ch}b",
        f"`a{ch}b`",
        f"```\na{ch}b\n```",
        f'[a{ch}b](https://x.example/{ch} "t{ch}")',
        f"![a{ch}b](https://x.example/p.png)",
        f"a &#x{ord(ch):x}; b",
        f"| h{ch} |\n|---|\n| c{ch} |",
    ]
    for text in texts:
        out = render_markdown(text)
        assert ch not in out, (text, out)
        assert_safe_fragment(out)
        assert code in out, (text, out)
    assert render_inline(f"x{ch}y") == f'x<span class="bidi">[{code}]</span>y'
    assert ch not in sanitize_html(f"<p title='{ch}'>{ch}</p>")


def test_empty_and_whitespace_only_show_the_marker_and_it_survives_sanitizing():
    for text in ("", "   \n\t ", "\n\n"):
        assert render_markdown(text) == EMPTY_HTML
        card = Walker(response_card("Response B", text, "b"))
        assert len(card.with_class("empty-response")) == 1
    assert sanitize_html(EMPTY_HTML) == EMPTY_HTML
    assert "(empty response)" in Walker(EMPTY_HTML).text


def test_literal_empty_marker_text_does_not_get_the_class():
    for text in ("(empty response)", '<p class="empty-response">(empty response)</p>'):
        w = assert_safe_fragment(render_markdown(text))
        assert w.with_class("empty-response") == []


def test_source_that_renders_to_nothing_is_shown_verbatim():
    w = assert_safe_fragment(render_markdown("[foo]: https://example.com"))
    assert w.text == "[foo]: https://example.com"


@pytest.mark.parametrize("text", ['<div class="card-label">Response B</div>', "#### Response B", "**Response B**"])
def test_card_label_cannot_be_imitated(text):
    w = Walker(response_card("Response A", text, "a"))
    labels = w.with_class("card-label")
    assert len(labels) == 1 and labels[0][0] == "div"
    assert len(w.with_class("response-card")) == 1
    assert w.text.startswith("Response A")


def test_response_card_label_is_escaped_and_side_checked():
    w = Walker(response_card("<b>A</b>", "x", "b"))
    assert [t for t, _ in w.tags] == ["div", "div", "div", "p"]
    assert w.tags[0][1] == {"class": "response-card", "data-side": "b"}
    assert w.text.startswith("<b>A</b>")
    with pytest.raises(ValueError):
        response_card("Response A", "x", "c")


def test_render_inline_escapes_everything():
    assert render_inline("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert render_inline("a\"b'c&d **e**") == "a&quot;b&#x27;c&amp;d **e**"
    assert Walker(render_inline("<script>alert(1)</script>")).tags == []


def test_render_conversation_labels_turns_and_sanitizes_content():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "<script>alert(1)</script> **hi**"},
        {"role": "assistant", "content": "Hello"},
        {"role": "<img src=x onerror=alert(1)>", "content": ""},
        {"role": "tool", "content": '{"ok": true}'},
    ]
    out = render_conversation(messages)
    w = Walker(out)
    assert w.tags[0] == ("div", {"class": "conversation"})
    assert [t for t, _ in w.tags].count("hr") == 4
    for label in ("System", "User", "Assistant (earlier turn)", "<img src=x onerror=alert(1)>", "Tool"):
        assert label in w.text
    assert "img" not in [t for t, _ in w.tags] and "script" not in [t for t, _ in w.tags]
    assert "<script>alert(1)</script>" in w.text  # shown as text
    assert len(w.with_class("turn-label")) == 5
    # everything inside the turns is from the allowlist; our own wrappers are the only divs
    for tag, attrs in w.tags:
        if tag == "div":
            assert attrs.get("class") in {"conversation", "turn", "turn-label", "turn-body"}
        else:
            assert tag in TAGS and not any(k.startswith("on") or k in FORBIDDEN_ATTRS for k in attrs)


def test_sanitize_html_enforces_the_allowlist():
    dirty = (
        '<div class="card-label" style="position:fixed" onclick="x()">t</div>'
        '<p class="empty-response card-label" id="vote-a">p</p><span class="bidi evil">s</span>'
        '<a href="javascript:alert(1)" target="_blank">j</a><a href="https://ok.example" rel="opener">ok</a>'
        "<img src=x onerror=alert(1)><script>alert(1)</script><style>*{}</style><form><input autofocus></form>"
        '<td align="center" style="color:red">c</td><code class="language-python">x</code>'
    )
    out = sanitize_html(dirty)
    w = assert_safe_fragment(out)
    assert w.with_class("card-label") == []
    assert w.with_class("empty-response") == [("p", {"class": "empty-response"})]
    assert w.with_class("bidi") == [("span", {"class": "bidi"})]
    assert "alert" not in out and "*{}" not in out
    assert [a.get("href") for t, a in w.tags if t == "a"] == [None, "https://ok.example"]


def test_render_css_styles_the_classes():
    for selector in (".response-card", ".card-label", ".card-body", ".bidi", ".empty-response", ".conversation"):
        assert selector in RENDER_CSS
    assert "border" in RENDER_CSS and "overflow: auto" in RENDER_CSS and "white-space: pre" in RENDER_CSS


def test_module_imports_no_heavy_or_ui_packages():
    code = (
        "import sys, annotate.render; "
        "bad = [m for m in ('torch', 'transformers', 'rlhf', 'gradio') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
