"""Qualification in the real app: through the JSON door, and in headless Chromium (a new annotator passes, another
fails and is told so, an admin lets them continue from the Dashboard)."""

import shutil

import httpx
import pytest
from apphelpers import Server, answer_rank, write_gold_pool
from test_app_browser import CHROMIUM, dom_problems, launch, message_has

from annotate.annotator_status import QUALIFY_PREFIX, annotator_status
from annotate.export import export
from annotate.store import read_table

pytestmark = pytest.mark.slow
QUALIFY = ("--qualify", "3", "--qualify-min", "0.6")  # 2 of 3 right to pass


def test_json_door_qualifies_and_holds_out_a_failed_annotator(tmp_path):
    store = tmp_path / "votes"
    with Server(write_gold_pool(tmp_path / "pool.jsonl"), store, "--seed", "2", *QUALIFY) as server:
        c = httpx.Client(base_url=server.url, timeout=60)
        for name, right in (("ann-good", True), ("ann-bad", False)):
            shown = c.post("/api/v1/next", json={"name": name}).json()
            for k in range(3):
                a, b = shown["pair"]["a"], shown["pair"]["b"]
                better = "a" if answer_rank(a) < answer_rank(b) else "b"
                choice = better if right else ("b" if better == "a" else "a")
                shown = c.post("/api/v1/vote", json={"session": shown["session"], "token": shown["token"],
                                                     "choice": choice, "name": name}).json()  # fmt: skip
                html = shown["message_html"]
                assert ("Right: Response " if right else "Not right: Response ") + better.upper() in html
                if k < 2:
                    assert f"Qualification: {k + 1} of 3 answered" in html
            if right:
                assert "You passed the qualification (3 of 3 right)" in shown["message_html"]
                assert shown["pair"] is not None  # ordinary pairs from here on
            else:
                assert shown["pair"] is None and "did not pass the qualification" in shown["message_html"]
                again = c.post("/api/v1/next", json={"name": name}).json()
                assert again["pair"] is None and "did not pass" in again["message_html"]
    rows = read_table(str(store)).to_pylist()
    assert len(rows) == 6 and all(r["session"].startswith(QUALIFY_PREFIX) for r in rows)
    assert annotator_status(store) == {"ann-good": "qualified", "ann-bad": "failed"}
    stats = export(str(store), tmp_path / "prefs.parquet", allow_empty=True)
    assert stats["held_out"] == 3  # the failed annotator's three votes; the qualified one's count


@pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian chromium not installed")
def test_browser_walks_new_annotators_through_qualification(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    store = tmp_path / "votes"
    pool = write_gold_pool(tmp_path / "pool.jsonl")
    with Server(pool, store, "--seed", "4", "--demo-admin", *QUALIFY) as server:
        with sync_api.sync_playwright() as pw:
            browser = launch(pw)

            def qualify(page, right: bool) -> None:
                page.goto(server.url)
                for k in range(3):
                    page.wait_for_function("document.querySelectorAll('.response-card').length === 2")
                    assert dom_problems(page) == []
                    a, b = answer_rank(page.inner_text("#response-a")), answer_rank(page.inner_text("#response-b"))
                    page.keyboard.press(("1" if a < b else "2") if right else ("2" if a < b else "1"))
                    message_has(page, "Right: Response" if right else "Not right: Response")
                    if k < 2:
                        message_has(page, f"Qualification: {k + 1} of 3 answered")

            good = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
            qualify(good, right=True)
            message_has(good, "You passed the qualification (3 of 3 right)")
            good.wait_for_function("document.querySelectorAll('.response-card').length === 2")
            good.keyboard.press("1")  # an ordinary pair now
            message_has(good, "Saved:")

            bad = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
            qualify(bad, right=False)
            message_has(bad, "did not pass the qualification (0 of 3 right; 2 needed)")
            assert bad.evaluate("document.querySelectorAll('.response-card').length") == 0
            bad.screenshot(path=str(tmp_path / "failed.png"), full_page=True)

            # The admin (demo mode with --demo-admin) sees who is held on the Dashboard and lets them continue.
            bad.get_by_role("tab", name="Dashboard").click()
            bad.wait_for_function(
                "(document.querySelector('#annotator-checks')?.innerText || '').includes('failed')", timeout=120000
            )
            assert dom_problems(bad) == []
            held = bad.evaluate("[...document.querySelectorAll('#annotator-checks td')].map(x => x.innerText)")
            name = held[0]  # held annotators come first
            assert name.startswith("anon-") and held[1] == "failed"
            bad.fill("#release-name input, #release-name textarea", name)
            bad.click("#release button, button#release")
            bad.wait_for_function(
                "(document.querySelector('#annotator-checks')?.innerText || '').includes('released')", timeout=60000
            )
            bad.goto(server.url)  # back to Annotate: pairs again, without another qualification
            bad.wait_for_function("document.querySelectorAll('.response-card').length === 2")
            bad.keyboard.press("2")
            message_has(bad, "Saved:")
            browser.close()
    rows = read_table(str(store)).to_pylist()
    qualifying = [r for r in rows if r["session"].startswith(QUALIFY_PREFIX)]
    assert len(qualifying) == 6 and len(rows) == 8
    status = annotator_status(store)
    assert sorted(status.values()) == ["qualified", "released"]
