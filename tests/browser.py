"""Headless Chromium for the browser tests (Debian's chromium + chromedriver through
Selenium). Without them a browser test skips, unless FUSEBENCH_REQUIRE_BROWSER=1 (CI)."""

from __future__ import annotations

import os
import shutil

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def need_browser() -> None:
    try:
        import selenium  # noqa: F401
        missing = [n for n, p in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if not p]
    except ImportError:
        missing = ["selenium"]
    if missing:
        why = f"no {', '.join(missing)} (apt-get install chromium chromium-driver; pip install selenium)"
        if os.environ.get("FUSEBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(why)
        pytest.skip(why)


def chrome(console_log: bool = False):
    """A headless Chromium driver, 1400x1000 (skips or fails first, as need_browser does)."""
    need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000",
                "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        options.add_argument(arg)
    if console_log:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def viewport(driver, width: int, height: int) -> None:
    """Size the window so that the page itself gets width x height CSS pixels (the window's
    own frame, where headless Chromium draws one, is added on top)."""
    driver.set_window_size(width, height)
    dw, dh = driver.execute_script("return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]")
    if dw or dh:
        driver.set_window_size(width + dw, height + dh)
