"""Console fixtures: one real server (real model, a safety lexicon) for the console tests, signed-in
HTTP sessions, and one headless Chromium driven by Playwright.

The browser is Debian's chromium (`/usr/bin/chromium`, or QFSERVE_CHROMIUM); Playwright never
downloads one. Without it the browser tests skip with a reason — except in CI (QFSERVE_CI=1, set by
.ci/run), where a missing browser fails the run.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import requests

from conftest import ROOT, cli, cli_json, start_server, stop_server

LEXICON = ROOT / "examples" / "safety" / "lexicon.tsv"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def unavailable(reason: str):
    """Skip on a developer machine; fail in CI, where every test must run."""
    if os.environ.get("QFSERVE_CI") == "1":
        pytest.fail(f"{reason} (QFSERVE_CI=1: CI must run this test)")
    pytest.skip(reason)


@pytest.fixture(scope="package")
def console_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("console-data")
    creds = cli_json(data_dir, "app", "create", "tester")
    cli_json(data_dir, "service", "publish", "svc", "--model", "default", "--rpm", "100000", "--tpm", "100000000")
    server = start_server(data_dir, "--safety-lexicon", str(LEXICON))
    server.creds = creds
    yield server
    stop_server(server)


def signin_link(server) -> str:
    out = cli(server.data_dir, "console", "--port", str(server.port)).stdout
    match = re.search(r"http://\S+/console/signin\?token=\S+", out)
    assert match, out
    return match.group(0)


def signed_in_session(server) -> tuple[requests.Session, str]:
    """A requests session holding a console cookie, and its CSRF token (read from a page, as a browser would)."""
    session = requests.Session()
    response = session.get(signin_link(server), timeout=30)
    assert response.status_code == 200, response.text
    page = session.get(f"{server.base_url}/console/", timeout=30)
    assert page.status_code == 200
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text).group(1)
    return session, csrf


@pytest.fixture(scope="package")
def chromium_path() -> str:
    path = os.environ.get("QFSERVE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        unavailable("Debian's chromium is not installed (apt-get install chromium)")
    return path


@pytest.fixture(scope="package")
def browser(chromium_path):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="package")
def artifacts(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("console-screenshots")
    print(f"\nconsole screenshots: {folder}")
    return folder
