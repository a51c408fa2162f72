"""The app in headless Chromium (Playwright): loads, votes by click and by key, and runs no injected script."""

import shutil

import pytest
from apphelpers import ROOT, Server, write_pool  # tests/ is on sys.path under pytest

from annotate.store import read_table

CHROMIUM = "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian chromium not installed"),
]
ARTIFACTS = ROOT / "test-artifacts"


def progress_has(page, text: str) -> None:
    page.wait_for_function(
        "t => (document.querySelector('#progress')?.innerText || '').includes(t)", arg=text, timeout=20000
    )


def test_browser_votes_and_no_script_runs(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    store = tmp_path / "votes"
    # Two candidates per prompt: every pair shows the response carrying <script> and <img onerror>.
    with Server(write_pool(tmp_path / "pool.jsonl", n_prompts=6, n_cands=2), store) as server:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM,
                args=["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(server.url)
            progress_has(page, "done today: 0")
            page.wait_for_function("(document.querySelector('#response-a')?.innerText || '').length > 0")

            # The hostile response is shown as text, and nothing in it ran.
            shown = page.inner_text("#response-a") + page.inner_text("#response-b")
            assert "<script>window.__pwned=1</script>" in shown
            assert '<img src=x onerror="window.__pwned=2">' in shown
            assert page.locator("#response-a img, #response-b img, #response-a script").count() == 0
            assert page.locator("#response-a code, #response-b code").count() >= 1  # code still highlighted

            page.get_by_label("much").check()
            page.click("#vote-a")
            progress_has(page, "done today: 1")
            # The optional fields go back to their defaults for the next pair (reset in the browser).
            page.wait_for_function("document.querySelector('input[value=\"clear\"]')?.checked === true")
            page.locator("body").click(position={"x": 5, "y": 5})  # focus outside any text field
            page.keyboard.press("2")  # shortcut: B is better
            progress_has(page, "done today: 2")
            assert page.inner_text("#key-hint").startswith("Keys:")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "app.png"), full_page=True)
            assert page.evaluate("typeof window.__pwned") == "undefined"

            # Demo mode is admin: the Dashboard shows the audit's findings and plots for the votes just cast.
            page.get_by_role("tab", name="Dashboard").click()
            page.wait_for_function(
                "(document.querySelector('#findings')?.innerText || '').includes('standing vote')", timeout=30000
            )
            assert page.locator("#findings li").count() >= 1
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            browser.close()
    votes = read_table(str(store)).to_pylist()
    assert len(votes) == 2 and {v["annotator"] for v in votes} == {"demo"}
    # "A is better" picks the left response; key 2 ("B is better") the right one.
    assert votes[0]["choice"] == votes[0]["left"] and votes[0]["strength"] == 3
    assert votes[1]["strength"] == 2  # "clear" again after the reset
    assert votes[1]["choice"] != votes[1]["left"] and votes[1]["choice"] in ("a", "b")
    assert (ARTIFACTS / "app.png").stat().st_size > 10_000
