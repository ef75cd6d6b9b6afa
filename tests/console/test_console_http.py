"""The console's doors, over real HTTP: sign-in links, sessions, CSRF, refusals, secrets shown once."""

from __future__ import annotations

import io
import re
from contextlib import redirect_stdout

import requests

from qfserve.api.console_ui import console_routes

from .conftest import signed_in_session, signin_link

DUMMY = {"api_path": "svc", "name": "tester", "job_id": "1", "action": "cancel"}


def _fill(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: DUMMY[m.group(1)], path)


def test_every_console_route_refuses_requests_not_signed_in(console_server):
    routes = console_routes()
    assert len(routes) > 20
    for method, path in routes:
        url = console_server.base_url + _fill(path)
        response = requests.request(method, url, data={"csrf_token": "x"}, allow_redirects=False, timeout=30)
        assert response.status_code == 401, (method, path, response.status_code)
        assert "tester" not in response.text or "Sign in" in response.text
        # A made-up cookie is no session either.
        forged = requests.request(method, url, cookies={"qfserve_console": "forged"}, allow_redirects=False, timeout=30)
        assert forged.status_code == 401, (method, path)
    api = requests.get(console_server.base_url + "/console/api/metrics", timeout=30)
    assert api.status_code == 401 and "error" in api.json()


def test_signin_link_works_once_and_sets_a_strict_httponly_cookie(console_server):
    link = signin_link(console_server)
    first = requests.get(link, timeout=30)
    assert first.status_code == 200
    cookie = first.headers["set-cookie"]
    assert "qfserve_console=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Path=/console" in cookie
    assert first.headers.get("cache-control") == "no-store"
    again = requests.get(link, timeout=30)
    assert again.status_code == 401 and "set-cookie" not in again.headers
    assert "unknown, used or expired" in again.text


def test_state_changes_need_the_csrf_token_and_the_same_origin(console_server):
    session, csrf = signed_in_session(console_server)
    url = console_server.base_url + "/console/apps"
    assert session.post(url, data={"name": "nocsrf"}, timeout=30).status_code == 403
    assert session.post(url, data={"name": "nocsrf", "csrf_token": "wrong"}, timeout=30).status_code == 403
    token_api = console_server.base_url + "/console/api/playground/token"
    assert session.post(token_api, json={"app": "tester"}, timeout=30).status_code == 403
    cross = session.post(url, data={"name": "cross", "csrf_token": csrf}, headers={"Origin": "http://evil.example"},
                         timeout=30)
    assert cross.status_code == 403
    names = [a["name"] for a in cli_apps(console_server)]
    assert "nocsrf" not in names and "cross" not in names
    created = session.post(url, data={"name": "withcsrf", "csrf_token": csrf}, timeout=30)
    assert created.status_code == 200 and "withcsrf" in [a["name"] for a in cli_apps(console_server)]
    minted = session.post(token_api, json={"app": "tester"}, headers={"X-CSRF-Token": csrf}, timeout=30)
    assert minted.status_code == 200 and minted.json()["access_token"].startswith("24.")


def cli_apps(server):
    import json

    return json.loads(server.cli("app", "list", "--json").stdout)


def test_secrets_are_shown_once(console_server):
    session, csrf = signed_in_session(console_server)
    created = session.post(console_server.base_url + "/console/apps", data={"name": "once", "csrf_token": csrf},
                           timeout=30)
    secret = re.search(r'<code id="secret_key">([0-9a-f]+)</code>', created.text).group(1)
    assert created.headers.get("cache-control") == "no-store"
    # The key works: the token endpoint accepts it.
    api_key = re.search(r'<code id="api_key">([0-9a-f]+)</code>', created.text).group(1)
    assert console_server.token({"api_key": api_key, "secret_key": secret}).startswith("24.")
    for path in ("/console/apps", "/console/apps/once", "/console/"):
        assert secret not in session.get(console_server.base_url + path, timeout=30).text


def test_signing_out_ends_the_session(console_server):
    session, csrf = signed_in_session(console_server)
    out = session.post(console_server.base_url + "/console/signout", data={"csrf_token": csrf}, allow_redirects=False,
                       timeout=30)
    assert out.status_code == 303
    session.cookies.clear()
    assert session.get(console_server.base_url + "/console/", timeout=30).status_code == 401


def test_demo_output_carries_a_working_signin_link(console_server):
    from qfserve.cli.serve import _ensure_demo
    from qfserve.config import load_settings

    printed = io.StringIO()
    with redirect_stdout(printed):
        _ensure_demo(load_settings(data_dir=console_server.data_dir, port=console_server.port))
    link = re.search(r"http://\S+/console/signin\?token=\S+", printed.getvalue()).group(0)
    assert requests.get(link, timeout=30).status_code == 200


def test_demo_on_an_empty_data_dir_prints_the_link_after_the_curl_pair(tmp_path):
    from qfserve.cli.serve import _ensure_demo
    from qfserve.config import load_settings

    printed = io.StringIO()
    with redirect_stdout(printed):
        _ensure_demo(load_settings(data_dir=tmp_path, port=18999))
    text = printed.getvalue()
    assert text.index("# 2. chat") < text.index("http://127.0.0.1:18999/console/signin?token=")
