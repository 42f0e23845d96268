"""The headless browser of the web station's tests, screenshots and benchmark: Debian's Chromium and its
chromedriver, driven by selenium, with nothing downloaded at run time.

Why these flags: a fresh ``--user-data-dir`` per run (no profile state leaks between runs), no sandbox (CI runs
as root in a container), and every background fetch Chromium would make on its own switched off (component
updates, sync, first-run pages, background networking), since the machines here reach no network. The driver
is named explicitly (``Service('/usr/bin/chromedriver')``) and so is the browser binary, so selenium-manager has
nothing to look up or download; ``SE_OFFLINE`` tells it not to try should it run anyway.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROME_FLAGS: tuple[str, ...] = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
    "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
)


def missing() -> str | None:
    """Why the browser cannot run here (for a clear skip), or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} is missing (apt-get install -y chromium chromium-driver; package {package})"
    return None


def start_browser(profile: Path, *, width: int = 1400, height: int = 1000) -> Any:
    """A headless Chromium with a fresh profile in ``profile`` (created), window ``width`` x ``height``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    profile.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
