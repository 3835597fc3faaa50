"""A real headless Chromium (Debian's chromium and chromium-driver, driven by Selenium) for the page tests.

Without the browser these tests skip, saying how to install it; with JARVIS_REQUIRE_ROOT_TESTS=1 (CI, whose
scripts/system-packages.sh installs it with the other system packages) they fail instead.  Screenshots and
figures the tests measure go to ``test-artifacts/`` (or $JARVIS_TEST_ARTIFACTS).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def artifacts_dir() -> Path:
    path = Path(os.environ.get("JARVIS_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium session (one per test session; tests open their own pages)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        reason = f"no {' or '.join(missing)}: apt-get install chromium chromium-driver (scripts/system-packages.sh)"
        if os.environ.get("JARVIS_REQUIRE_ROOT_TESTS") == "1":
            pytest.fail(f"JARVIS_REQUIRE_ROOT_TESTS=1 but {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))  # no Selenium Manager download
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver, url: str) -> None:
    """Navigate to ``url`` with the browser's log emptied first (the session is shared by the tests)."""
    driver.get_log("browser")
    driver.get(url)


def page_errors(driver) -> list[str]:
    """Severe messages the page logged since :func:`open_page` (a script error, an asset that did not load)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def wait_for(driver, script: str, *, timeout_s: float = 30.0, what: str = ""):
    """Poll ``script`` (JavaScript returning a value) in the page until it is truthy; return it."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout_s, poll_frequency=0.05).until(
        lambda d: d.execute_script(script), message=f"the page never showed {what or script}")
