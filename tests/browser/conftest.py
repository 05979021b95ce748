"""Headless Chromium for the dashboard's browser tests (marked ``browser``).

Chromium is Debian's package (``make system-deps`` installs it), driven by Playwright; the
browser builds Playwright would download are never used. Without Chromium the tests are
skipped with the reason, or fail when ``CLICKSTREAM_REQUIRE_SERVICES=1``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

_HERE = Path(__file__).parent
OUTPUT_DIR = _HERE.parents[1] / "test-output"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under ``tests/browser`` with ``browser``."""
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.browser)


def _chromium() -> str | None:
    for candidate in (
        "/usr/bin/chromium",
        shutil.which("chromium"),
        shutil.which("chromium-browser"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """A headless Chromium shared by the session's tests."""
    executable = _chromium()
    if executable is None:
        reason = "Chromium is not installed (run `make system-deps` or apt-get install chromium)"
        if os.environ.get("CLICKSTREAM_REQUIRE_SERVICES") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser) -> Iterator[object]:
    """A fresh page (1440 x 900, UTC); JavaScript errors fail the test."""
    context = browser.new_context(viewport={"width": 1440, "height": 900}, timezone_id="UTC")
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on(
        "console",
        lambda message: errors.append(message.text) if message.type == "error" else None,
    )
    tab.set_default_timeout(30_000)
    yield tab
    context.close()
    assert errors == [], f"the page logged errors: {errors}"


@pytest.fixture
def screenshot() -> Callable[[object, str], Path]:
    """``screenshot(page, name)`` saves a full-page PNG as ``test-output/<name>.png``."""

    def take(tab, name: str) -> Path:
        OUTPUT_DIR.mkdir(exist_ok=True)
        path = OUTPUT_DIR / f"{name}.png"
        tab.screenshot(path=str(path), full_page=True)
        return path

    return take
