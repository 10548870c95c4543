"""The search page end to end in headless Chromium (Playwright): type a query, see the expected images.

Set OPENALIGN_SCREENSHOT=path.png to also save a screenshot of the page (docs/search-page.png).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from openalign.search.build import build_index
from openalign.search.query import Searcher
from openalign.search.server import create_app

from search_helpers import ToyEncoder, make_collection

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} missing (apt-get install chromium)"),
]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    import uvicorn

    root = tmp_path_factory.mktemp("pagesearch")
    make_collection(root / "images", per_kind=3)
    build_index(root / "index", None, images=str(root / "images"), num_workers=0, encoder=ToyEncoder())
    app = create_app(Searcher.open(root / "index", ToyEncoder()))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def grid_captions(page) -> list[str]:
    return page.locator("#grid .result .caption").all_inner_texts()


def test_type_query_see_images_then_click_and_modify(base_url: str):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 760})
            page.goto(base_url + "/")
            page.fill("#k", "3")
            page.fill("#text", "green triangle")
            page.click("#go")
            page.wait_for_selector("#grid .result")
            assert grid_captions(page) == ["a green triangle"] * 3
            page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)")
            # click a result: search by that image, then + "blue" - "green" (the page's modifier terms)
            page.fill("#k", "6")
            page.click("#grid .result >> nth=0")
            page.wait_for_selector("#query-image:not(.hidden)")
            page.wait_for_function("document.querySelector('#status').textContent.includes('6 results')")
            assert grid_captions(page)[:3] == ["a green triangle"] * 3
            page.click("#add-plus")
            page.locator("#terms .term-text").nth(0).fill("blue")
            page.click("#add-minus")
            page.locator("#terms .term-text").nth(1).fill("green")
            page.click("#go")
            page.wait_for_function("document.querySelector('#grid .caption').textContent === 'a blue triangle'")
            assert grid_captions(page)[:3] == ["a blue triangle"] * 3
            page.wait_for_function("[...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)")
            shot = os.environ.get("OPENALIGN_SCREENSHOT")
            if shot:
                page.screenshot(path=shot, full_page=True)
        finally:
            browser.close()


def test_bad_input_shows_error_not_crash(base_url: str):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(base_url + "/")
            page.fill("#text", "red")  # red - red: the API refuses the query (422), the page says so
            page.click("#add-minus")
            page.locator("#terms .term-text").nth(0).fill("red")
            page.click("#go")
            page.wait_for_selector("#status.error")
            assert "422" in page.inner_text("#status") and "cancel" in page.inner_text("#status")
            page.fill("#k", "500")  # out of range: the browser's own validation stops the request
            page.click("#go")
            assert page.evaluate("document.querySelector('#k').validity.valid") is False
        finally:
            browser.close()


def test_chromium_binary_is_real():
    assert shutil.which("chromium") or Path(CHROMIUM).exists()
