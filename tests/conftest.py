"""Shared fixtures: a headless Chromium (Debian's chromium + chromium-driver, which .ci/run
installs) driven by Selenium, to check pages as a person would see them."""
import io
import shutil

import pytest
from PIL import Image, ImageStat

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1200,900"]


@pytest.fixture(scope="session")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver_path):
        pytest.fail("headless Chromium is needed: apt-get install chromium chromium-driver "
                    "(.ci/run installs both)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    yield driver
    driver.quit()


def open_page(browser, path):
    """Load a local page; return the console messages of level SEVERE (errors)."""
    browser.get(path.resolve().as_uri())
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def check_images(browser) -> int:
    """Every <img> decoded (natural size > 0) and shows something (not one flat colour);
    returns how many there are."""
    from selenium.webdriver.common.by import By
    images = browser.find_elements(By.TAG_NAME, "img")
    for img in images:
        assert browser.execute_script("return arguments[0].complete && "
                                      "arguments[0].naturalWidth > 0", img), \
            img.get_attribute("alt")
        browser.execute_script("arguments[0].scrollIntoView()", img)
        shot = Image.open(io.BytesIO(img.screenshot_as_png)).convert("L")
        assert ImageStat.Stat(shot).stddev[0] > 5, f"blank image: {img.get_attribute('alt')}"
    return len(images)
