"""The search page in real headless Chromium: type a query, see thumbnails load, open one, see captions,
ask for more like a result.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium chromium-driver``) and
``selenium``. Saves a screenshot to ``$DEVISE_SCREENSHOT_DIR/search-screenshot.png`` (default: the
test's tmp_path).
"""

import json
import os
import pathlib
import shutil
import urllib.parse
import urllib.request

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from devise.search.engine import SearchEngine
from devise.web import BackgroundServer, create_app

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = os.environ.get("DEVISE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DEVISE_CHROMEDRIVER", shutil.which("chromedriver") or "/usr/bin/chromedriver")
QUERY = "a red circle"


def _browser_or_skip():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.isfile(p)]
    if missing:
        pytest.skip(
            f"headless Chromium not installed ({', '.join(missing)} missing): "
            "run `apt-get install chromium chromium-driver`"
        )
    return pytest.importorskip("selenium", reason="selenium not installed: pip install selenium")


@pytest.fixture(scope="module")
def server(tiny_run, tiny_index):
    app = create_app(SearchEngine.load(tiny_run, tiny_index), max_k=100)
    with BackgroundServer(app, host="127.0.0.1", port=0) as running:
        yield running


@pytest.fixture
def driver(tmp_path, monkeypatch):
    _browser_or_skip()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--disable-default-apps",
        "--no-first-run",
        "--no-default-browser-check",
        "--window-size=1280,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(
        options=options, service=Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    )
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()


def _loaded_images(browser, selector: str) -> tuple[int, int]:
    """(number of <img> matching ``selector``, how many of them finished loading with pixels)."""
    return tuple(
        browser.execute_script(
            "const imgs = [...document.querySelectorAll(arguments[0])];"
            "return [imgs.length, imgs.filter(i => i.complete && i.naturalWidth > 0).length];",
            selector,
        )
    )


def test_type_a_query_see_thumbnails_open_one_see_captions(server, driver, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 60, poll_frequency=0.1)
    driver.get(server.url + "/")
    assert "image search" in driver.title

    box = driver.find_element(By.ID, "q")
    box.send_keys(QUERY)
    k = driver.find_element(By.ID, "k")
    k.clear()
    k.send_keys("12")
    box.send_keys(Keys.ENTER)

    def all_thumbnails_loaded(browser):
        count, loaded = _loaded_images(browser, "#results .result img")
        return count == 12 and loaded == count

    wait.until(all_thumbnails_loaded, message="result thumbnails did not load")
    status = driver.find_element(By.ID, "status").text
    assert QUERY in status and "12 images" in status
    scores = [float(e.text) for e in driver.find_elements(By.CSS_SELECTOR, "#results .result .score")]
    assert scores == sorted(scores, reverse=True)

    driver.find_elements(By.CSS_SELECTOR, "#results .result")[0].click()
    wait.until(lambda b: _loaded_images(b, "#detail-img") == (1, 1), message="full image did not load")
    wait.until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, "#captions li.caption")) == 5,
        message="captions did not appear",
    )
    captions = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#captions li.caption")]
    assert all(c.strip() for c in captions)
    assert driver.find_element(By.ID, "detail").is_displayed()

    out_dir = pathlib.Path(os.environ.get("DEVISE_SCREENSHOT_DIR") or tmp_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    shot = out_dir / "search-screenshot.png"
    assert driver.save_screenshot(str(shot)), "screenshot failed"
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # "More like this" on a result searches by that image: it comes back first, the others follow.
    third = driver.find_elements(By.CSS_SELECTOR, "#results .result")[2]
    wanted = third.get_attribute("title")
    first_before = driver.find_elements(By.CSS_SELECTOR, "#results .result")[0].get_attribute("title")
    third.find_element(By.CSS_SELECTOR, ".more-like").click()
    wait.until(lambda b: "like " + wanted in b.find_element(By.ID, "status").text, message="no more-like-this search")
    wait.until(all_thumbnails_loaded, message="more-like-this thumbnails did not load")
    cards = driver.find_elements(By.CSS_SELECTOR, "#results .result")
    assert cards[0].get_attribute("title") == wanted != first_before
    scores = [float(e.text) for e in driver.find_elements(By.CSS_SELECTOR, "#results .result .score")]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.99
    assert "like_row=" in driver.current_url

    # A refused query shows the server's error message and keeps the page usable.
    driver.execute_script("document.getElementById('q').value = 'x'.repeat(600);")
    driver.find_element(By.ID, "go").click()
    wait.until(lambda b: "too long" in b.find_element(By.ID, "status").text, message="no error shown")

    # A page URL runs a combined, filtered query: the status says it in words and the page shows what the
    # API returns for the same parameters, in the same order.
    query = {"q": QUERY, "not": "triangle", "k": "6", "min_score": "-1"}
    url_query = urllib.parse.urlencode(query)
    with urllib.request.urlopen(f"{server.url}/api/search?{url_query}", timeout=60) as response:
        expected = [hit["id"] for hit in json.load(response)["results"]]
    plain = urllib.parse.urlencode({"q": QUERY, "k": "6"})
    with urllib.request.urlopen(f"{server.url}/api/search?{plain}", timeout=60) as response:
        assert [hit["id"] for hit in json.load(response)["results"]] != expected, "the not term changed nothing"
    driver.get(f"{server.url}/?{url_query}")
    wait.until(
        lambda b: "not \u201ctriangle\u201d" in b.find_element(By.ID, "status").text, message="no combined query"
    )
    wait.until(
        lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .result")) == len(expected),
        message="combined query results did not appear",
    )
    shown = [e.get_attribute("title") for e in driver.find_elements(By.CSS_SELECTOR, "#results .result")]
    assert shown == expected
    assert driver.find_element(By.ID, "q").get_attribute("value") == QUERY
