"""The app in headless Chromium (Playwright): a hostile pool cannot change the page, the keyboard alone does every
job, and what was pressed is what is stored."""

import shutil
from urllib.parse import urlparse

import pytest
from apphelpers import ROOT, Server, write_pool  # tests/ is on sys.path under pytest
from hostile import ATTACKS, write_hostile_pool

from annotate.render import ALLOWED_CLASSES, ALLOWED_TAGS
from annotate.store import effective_table, read_table

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian chromium not installed"),
]
ARTIFACTS = ROOT / "test-artifacts"
ALLOWED_ATTRS = ["href", "title", "rel", "start", "align", "class"]
# Every element inside the untrusted parts of a card or a prompt turn, checked against the render allowlist.
DOM_CHECK = """
([tags, attrs, classes]) => {
  const bad = [];
  const roots = document.querySelectorAll(".card-body, .turn-body, .findings, table.annotators");
  for (const root of roots) for (const el of root.querySelectorAll("*")) {
    const tag = el.tagName.toLowerCase();
    if (!tags.includes(tag)) bad.push(tag);
    for (const a of el.attributes) {
      if (!attrs.includes(a.name)) bad.push(tag + "@" + a.name);
      if (a.name === "class" && !(classes[tag] || []).includes(a.value)) bad.push(tag + "." + a.value);
      if (a.name === "href" && !/^(https?:|mailto:)/.test(a.value)) bad.push("href=" + a.value);
    }
  }
  for (const card of document.querySelectorAll(".response-card"))
    if (card.querySelectorAll(".card-label").length !== 1) bad.push("card labels");
  for (const id of ["overlay1", "overlay2", "grab", "listcode"]) if (document.getElementById(id)) bad.push("#" + id);
  if (document.querySelectorAll("#vote-a").length !== 1) bad.push("two #vote-a");
  if (typeof window.__pwned !== "undefined") bad.push("script ran");
  return bad;
}
"""


def launch(pw):
    return pw.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--no-first-run", "--disable-sync"],
    )  # fmt: skip


def progress_has(page, text: str) -> None:
    page.wait_for_function(
        "t => (document.querySelector('#progress')?.innerText || '').includes(t)", arg=text, timeout=30000
    )


def message_has(page, text: str) -> None:
    page.wait_for_function(
        "t => (document.querySelector('#message')?.innerText || '').includes(t)", arg=text, timeout=30000
    )


def dom_problems(page) -> list[str]:
    classes = {k: sorted(v) for k, v in ALLOWED_CLASSES.items()}
    return page.evaluate(DOM_CHECK, [sorted(ALLOWED_TAGS), ALLOWED_ATTRS, classes])


def test_hostile_pool_cannot_change_the_page(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    store = tmp_path / "votes"
    pool = write_hostile_pool(tmp_path / "pool.jsonl")
    with Server(pool, store, "--seed", "1", "--demo-admin") as server:
        with sync_api.sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(server.url)
            progress_has(page, "done today: 0")
            seen_prompts = set()
            for n in range(len(ATTACKS)):
                page.wait_for_function("document.querySelectorAll('.response-card').length === 2")
                assert dom_problems(page) == [], page.inner_html("#response-a")
                seen_prompts.add(page.inner_text("#prompt"))
                if n == 0:
                    ARTIFACTS.mkdir(exist_ok=True)
                    page.screenshot(path=str(ARTIFACTS / "hostile.png"), full_page=True)
                page.keyboard.press("1")  # the number keys still vote, whatever the pair holds
                progress_has(page, f"done today: {n + 1}")
            assert len(seen_prompts) == len(ATTACKS)
            shown = page.inner_text("#message")
            assert "Nothing left" in page.inner_text("body") or "Saved" in shown

            # Demo mode: hostile annotator names are refused, and the page is unchanged by them.
            for attack in ATTACKS.values():
                page.fill("#annotator input, #annotator textarea", attack[:64])
                page.keyboard.press("Enter")
            page.keyboard.press("Escape")
            assert dom_problems(page) == []

            # The Dashboard shows source names (untrusted) in findings and tables: same allowlist.
            page.get_by_role("tab", name="Dashboard").click()
            page.wait_for_function("(document.querySelector('#findings')?.innerText || '').length > 20", timeout=60000)
            assert dom_problems(page) == []
            page.screenshot(path=str(ARTIFACTS / "hostile-dashboard.png"), full_page=True)
            browser.close()
    hosts = {urlparse(u).hostname for u in requests if urlparse(u).scheme in ("http", "https", "ws", "wss")}
    assert hosts == {"127.0.0.1"}, f"the page contacted other hosts: {hosts - {'127.0.0.1'}}"
    votes = read_table(str(store)).to_pylist()
    assert len(votes) == len(ATTACKS) and all(v["choice"] == v["left"] for v in votes)
    assert all(v["annotator"].startswith("anon-") for v in votes)  # this browser's own anonymous id


def test_keyboard_only_session(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    store = tmp_path / "votes"
    with Server(write_pool(tmp_path / "pool.jsonl", n_prompts=6, n_cands=3, nasty=False), store, "--seed", "3") as s:
        with sync_api.sync_playwright() as pw:
            browser = launch(pw)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(s.url)
            progress_has(page, "done today: 0")
            page.wait_for_function("document.querySelectorAll('.response-card').length === 2")
            kb = page.keyboard
            # strength "much"; correct -> A, helpful -> B, harmless -> Same, concise -> A (each key cycles)
            for key in "e" + "z" + "xx" + "ccc" + "v":
                kb.press(key)
            page.focus("#rationale textarea")
            kb.type("short and right; 1 2 3 typed here are text")
            kb.press("Escape")  # leave the text box: the keys act again
            kb.press("1")
            progress_has(page, "done today: 1")
            message_has(page, "Saved: A is better (much)")
            kb.press("b")  # flag: broken
            message_has(page, "flagged as broken")
            kb.press("3")  # tie
            progress_has(page, "done today: 3")
            kb.press("u")  # undo the tie: the pair comes back
            message_has(page, "undone")
            kb.press("2")  # B is better (strength back to "clear")
            message_has(page, "Saved: B is better (clear)")
            kb.press("h")  # select the newest History entry ...
            kb.press("r")  # ... and re-open it
            message_has(page, "Changing your earlier vote (B is better)")
            kb.press("4")  # both bad replaces it
            message_has(page, "Changed: Both bad")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "keyboard.png"), full_page=True)
            browser.close()
    rows = read_table(str(store)).to_pylist()
    first, flagged, tie, undo_tie, b_vote, undo_b, both_bad = rows
    other = "b" if first["left"] == "a" else "a"
    assert first["choice"] == first["left"] and first["strength"] == 3
    assert dict(first["criteria"]) == {"correct": first["left"], "helpful": other, "harmless": "tie",
                                       "concise": first["left"]}  # fmt: skip
    assert first["rationale"] == "short and right; 1 2 3 typed here are text"
    assert (flagged["choice"], flagged["flag"]) == ("skip", "broken")
    assert tie["choice"] == "tie" and undo_tie["retracts"] == tie["comparison_id"]
    assert b_vote["prompt_id"] == tie["prompt_id"] and b_vote["choice"] != b_vote["left"] and b_vote["strength"] == 2
    assert undo_b["retracts"] == b_vote["comparison_id"]
    assert both_bad["choice"] == "both_bad" and both_bad["prompt_id"] == b_vote["prompt_id"]
    standing = [r["comparison_id"] for r in effective_table(read_table(str(store))).to_pylist()]
    assert standing == [first["comparison_id"], flagged["comparison_id"], both_bad["comparison_id"]]
