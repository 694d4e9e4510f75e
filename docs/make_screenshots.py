"""The search page's screenshots in docs/, from the demo model that README command 1 trains.

Usage::

    devise-train --config configs/demo.yaml              # README command 1: writes runs/demo-<timestamp>/
    python docs/make_screenshots.py --run runs/demo-<timestamp> [--out docs] [--index shots.h5]

Needs ``devise[serve]``, selenium and headless Chromium (Debian: ``apt-get
install chromium chromium-driver``). Steps:

1. ``devise-index`` indexes the demo's images (the run's ``data.root``/dataset,
   1000 generated pictures in one folder per category, such as ``red_circle/``)
   into ``--index`` (default: ``screenshots-index.h5`` in the run directory;
   rerunning reuses it);
2. the app ``devise-serve`` runs is served on a free loopback port;
3. every query to be shown is first asked of the JSON API, and its top
   results must be of the expected categories (the folder of each result):
   a query the model answers badly stops the script with what came back,
   instead of a misleading picture;
4. headless Chromium (driven as ``tests/web/test_browser.py`` drives it)
   opens the page and saves each shot, reduced to a 256-colour palette
   (each under 300 KB).

The shots (:data:`SHOTS`): a text query with the first result opened and its
best captions; "More like this" clicked on a result of another query; a
combined query (text minus a negative term) written in the page's URL as
``/api/search`` takes it (``under``, ``since``, ``until`` and ``min_score``
go the same way).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import urllib.parse

REPO = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("DEVISE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DEVISE_CHROMEDRIVER", shutil.which("chromedriver") or "/usr/bin/chromedriver")
MAX_PNG_BYTES = 300_000


@dataclasses.dataclass(frozen=True)
class Shot:
    """One screenshot: the page URL's query, what its top results must be, and what to click.

    Attributes:
        file: the PNG's name in ``--out``.
        query: ``/api/search`` parameters (also the page's URL query).
        expect: the categories (image folders) the top ``top`` results must all be in.
        top: how many results are checked.
        like: click "More like this" on the result at this position (0-based)
            of ``query``; its results are then checked against ``expect``.
        open_first: open the first result (full image and its best captions).
    """

    file: str
    query: dict
    expect: tuple[str, ...]
    top: int = 8
    like: int | None = None
    open_first: bool = False


SHOTS = (
    Shot("search-screenshot.png", {"q": "two red circles", "k": 12}, ("red_circle",), top=12, open_first=True),
    Shot("search-more-like-this.png", {"q": "a blue star", "k": 12}, ("blue_star",), like=3),
    # "a star" alone gives mostly blue stars; minus "blue", stars of the other colours.
    Shot(
        "search-combined.png",
        {"q": "a star", "not": "blue", "k": 12},
        ("yellow_star", "green_star", "red_star"),
        top=12,
    ),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the demo run directory (README command 1)")
    parser.add_argument("--out", default=str(REPO / "docs"), help="folder for the PNGs (default: docs/)")
    parser.add_argument("--index", help="index file to build or reuse (default: RUN/screenshots-index.h5)")
    args = parser.parse_args(argv)

    import devise
    from devise.search.engine import SearchEngine
    from devise.web import BackgroundServer, create_app

    run = pathlib.Path(args.run).resolve()
    images = pathlib.Path(devise.load_config(run / "config.yaml").data.root).resolve() / "dataset"
    index = pathlib.Path(args.index or run / "screenshots-index.h5").resolve()
    out = pathlib.Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "devise.cli.index", "--run", str(run), "--images", str(images)]
    subprocess.run([*command, "--out", str(index), "--quiet"], check=True)

    app = create_app(SearchEngine.load(run, index), max_k=100)
    with BackgroundServer(app, host="127.0.0.1", port=0, log_level="warning") as server:
        for shot in SHOTS:
            check(server.url, shot)
        with tempfile.TemporaryDirectory() as profile, browser(profile) as driver:
            for shot in SHOTS:
                path = take(driver, server.url, shot, out)
                print(f"{path}: {path.stat().st_size / 1000:.0f} KB")
    return 0


def api(url: str, params: dict) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/api/search?{urllib.parse.urlencode(params, doseq=True)}", timeout=120) as r:
        return json.load(r)


def check(url: str, shot: Shot) -> None:
    """Refuse a shot whose query the model answers badly (see the module docstring)."""
    results = api(url, shot.query)["results"]
    if shot.like is not None:
        liked = results[shot.like]
        results = api(url, {"like_row": liked["row"], "k": shot.query.get("k", 12)})["results"]
        if results[0]["row"] != liked["row"]:
            sys.exit(f"{shot.file}: more like {liked['id']} does not put it first: {[r['id'] for r in results[:3]]}")
    got = [r["id"].split("/")[0] for r in results[: shot.top]]
    if len(got) < shot.top or any(category not in shot.expect for category in got):
        sys.exit(
            f"{shot.file}: the top {shot.top} results of {shot.query} are {got}, not all in {list(shot.expect)}; "
            "choose a query the model answers well"
        )
    print(
        f"{shot.file}: top {shot.top} of {shot.query}{' (more like #' + str(shot.like + 1) + ')' if shot.like is not None else ''} all in {list(shot.expect)}"
    )


class browser:
    """Headless Chromium at 1280x900, as the browser test starts it (nothing downloaded)."""

    def __init__(self, profile: str):
        self.profile = profile

    def __enter__(self):
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not try to download anything
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        for needed in (CHROMIUM, CHROMEDRIVER):
            if not os.path.isfile(needed):
                sys.exit(
                    f"{needed}: not found; install chromium and chromium-driver (or set DEVISE_CHROMIUM/DEVISE_CHROMEDRIVER)"
                )
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
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1280,900",
            f"--user-data-dir={self.profile}",
        ):
            options.add_argument(flag)
        self.driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        self.driver.set_page_load_timeout(60)
        return self.driver

    def __exit__(self, *exc) -> None:
        self.driver.quit()


def take(driver, url: str, shot: Shot, out: pathlib.Path) -> pathlib.Path:
    """Open the shot's page, click what it says, wait for every image, and save the reduced PNG."""
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, 120, poll_frequency=0.1)
    k = shot.query.get("k", 12)

    def results_loaded(browser) -> bool:
        loaded = browser.execute_script(
            "const imgs = [...document.querySelectorAll('#results .result img')];"
            "return [imgs.length, imgs.filter(i => i.complete && i.naturalWidth > 0).length];"
        )
        return loaded[0] == k and loaded[1] == k

    driver.get(f"{url}/?{urllib.parse.urlencode(shot.query, doseq=True)}")
    wait.until(results_loaded, message=f"{shot.file}: result thumbnails did not load")
    if shot.like is not None:
        card = driver.find_elements(By.CSS_SELECTOR, "#results .result")[shot.like]
        wanted = card.get_attribute("title")
        card.find_element(By.CSS_SELECTOR, ".more-like").click()
        wait.until(lambda b: "like " + wanted in b.find_element(By.ID, "status").text)
        wait.until(results_loaded, message=f"{shot.file}: more-like-this thumbnails did not load")
    if shot.open_first:
        driver.find_elements(By.CSS_SELECTOR, "#results .result")[0].click()
        wait.until(
            lambda b: (
                b.execute_script(
                    "const i = document.getElementById('detail-img'); return i.complete && i.naturalWidth > 0"
                )
                and len(b.find_elements(By.CSS_SELECTOR, "#captions li.caption")) == 5
            ),
            message=f"{shot.file}: the opened result's image or captions did not load",
        )
    driver.execute_script("document.activeElement.blur()")  # no focus ring in the picture
    ActionChains(driver).move_to_element(driver.find_element(By.ID, "status")).perform()  # nor a hovered card
    raw = out / (shot.file + ".raw.png")
    driver.save_screenshot(str(raw))
    path = out / shot.file
    with Image.open(raw) as img:
        img.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    raw.unlink()
    if path.stat().st_size > MAX_PNG_BYTES:
        sys.exit(f"{path}: {path.stat().st_size} bytes, over {MAX_PNG_BYTES}; shrink the window or the results")
    return path


if __name__ == "__main__":
    sys.exit(main())
