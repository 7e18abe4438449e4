"""Headless Chromium from Debian's packages (`chromium`, `chromium-driver`), driven by
Selenium through the system chromedriver: no browser or driver is ever downloaded.

$NCF_CHROMIUM / $NCF_CHROMEDRIVER name the binaries (default: `chromium` and `chromedriver`
on the PATH). Where they are missing the browser tests skip with the reason, unless
$NCF_REQUIRE_BROWSER=1 (set by .ci/run, which installs them): then they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def binaries() -> tuple[str, str]:
    """(chromium, chromedriver), or skip/fail with what is missing."""
    chromium = os.environ.get("NCF_CHROMIUM") or shutil.which("chromium")
    driver = os.environ.get("NCF_CHROMEDRIVER") or shutil.which("chromedriver")
    if chromium and driver:
        return chromium, driver
    reason = ("no headless browser: install Debian's chromium and chromium-driver "
              "(.ci/run does) or set NCF_CHROMIUM and NCF_CHROMEDRIVER")
    if os.environ.get("NCF_REQUIRE_BROWSER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@contextlib.contextmanager
def chrome(*, width: int = 1500, height: int = 950) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def page_text(driver: Any) -> str:
    return str(driver.find_element("tag name", "body").text)


def wait_for(driver: Any, ready: Callable[[str], bool], *, timeout: float = 60.0,
             what: str = "the page") -> str:
    """The page's text once `ready(text)` holds (polled; single-page apps render late)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = page_text(driver)
        if ready(text):
            return text
        time.sleep(1.0)
    raise AssertionError(f"{what} at {driver.current_url} never got ready; it shows:\n"
                         f"{text[:3000]}")


def airflow_login(driver: Any, base_url: str, username: str, password: str) -> None:
    """Sign in through Airflow's login form (the simple auth manager's)."""
    from selenium.webdriver.common.by import By

    driver.get(f"{base_url.rstrip('/')}/auth/login")
    wait_for(driver, lambda text: "Sign in" in text, what="Airflow's login page")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    deadline = time.monotonic() + 30
    while "/auth/login" in driver.current_url and time.monotonic() < deadline:
        time.sleep(0.5)


def screenshot(driver: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return path


def close_mlflow_assistant(driver: Any) -> None:
    """MLflow 3.17 opens its assistant chat beside every page, a third of the width: close
    it so that the runs table gets the room (its columns render only when on screen)."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label=Close]"):
        if button.get_attribute("data-component-id") == "mlflow.assistant.chat_panel.close":
            button.click()
            time.sleep(1.0)
