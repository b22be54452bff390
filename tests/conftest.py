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


def folder_hash(folder) -> str:
    """Every file below `folder`: its relative path and its bytes (to show nothing changed)."""
    import hashlib
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


def cifar_tar():
    """The shared CIFAR-10 JPEG archive: $DEITKIT_CIFAR_TAR, else ../shared/data beside the
    repository (where .ci/run finds it), else /work/shared/data."""
    import os
    from pathlib import Path
    here = Path(__file__).resolve().parent.parent
    for p in (os.environ.get("DEITKIT_CIFAR_TAR"), here.parent / "shared/data/cifar10-jpg.tar.gz",
              "/work/shared/data/cifar10-jpg.tar.gz"):
        if p and Path(p).is_file():
            return Path(p)
    pytest.fail("the shared CIFAR-10 archive cifar10-jpg.tar.gz is needed (../shared/data/ "
                "beside the repository, or set DEITKIT_CIFAR_TAR)")


@pytest.fixture(scope="session")
def cifar_folder(tmp_path_factory):
    """A real CIFAR-10 ImageFolder of 20 train and 5 test JPEGs per class, read from the start
    of the shared archive (a few seconds; never the whole archive)."""
    import tarfile
    root = tmp_path_factory.mktemp("cifar-small")
    want = {"train": 20, "test": 5}
    counts = {}
    with tarfile.open(cifar_tar(), "r:gz") as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 3 or parts[0] not in want:
                continue
            key = (parts[0], parts[1])
            if counts.get(key, 0) >= want[parts[0]]:
                continue
            counts[key] = counts.get(key, 0) + 1
            out = root / m.name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tar.extractfile(m).read())
            if len(counts) == 20 and all(counts[k] >= want[k[0]] for k in counts):
                break
    return root
