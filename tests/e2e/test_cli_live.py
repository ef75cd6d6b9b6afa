"""The CLI changes a running server's world: apps and services made, changed or deleted with
`qfserve app …` / `qfserve service …` take effect on the server's next request, without a restart.

Most checks here use a request the server refuses after authentication and service lookup
(an even number of messages → 336006): that proves "token valid, service exists, permission
granted" without running the model. One check per kind of change does run the model, for 2 tokens.
"""

from __future__ import annotations

import json
import re
import stat

import pytest
import requests

ID_RE = re.compile(r"^as-[a-z0-9]{10}$")
HELLO = [{"role": "user", "content": "hi"}]
EVEN = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def post(server, token: str, api_path: str, messages=HELLO, **extra) -> dict:
    response = requests.post(server.chat_url(api_path), params={"access_token": token},
                             json={"messages": messages, "max_output_tokens": 2, **extra}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def reached_validation(server, token: str, api_path: str) -> bool:
    """True when auth, service lookup and permission all passed (the body's own error came back)."""
    body = post(server, token, api_path, EVEN)
    return body.get("error_code") == 336006


def error_code(body: dict) -> int | None:
    return body.get("error_code")


def cli_json(server, *args: str):
    return json.loads(server.cli(*args, "--json").stdout)


# ---- services -----------------------------------------------------------------------------------

def test_publish_is_live_then_delete_is_live(server, token):
    assert error_code(post(server, token, "live_new", EVEN)) == 336005
    published = cli_json(server, "service", "publish", "live_new", "--model", "default",
                         "--profile", "ERNIE-Lite-8K", "--rpm", "1234", "--tpm", "567890")
    assert {"api_path", "model", "profile", "rpm", "tpm"} <= set(published)
    assert published["api_path"] == "live_new"
    assert published["model"] == "default"
    assert published["profile"] == "ERNIE-Lite-8K"
    assert published["rpm"] == 1234 and published["tpm"] == 567890

    answer = requests.post(server.chat_url("live_new"), params={"access_token": token},
                           json={"messages": HELLO, "max_output_tokens": 2}, timeout=120)
    body = answer.json()
    assert "error_code" not in body, body
    assert ID_RE.match(body["id"]) and body["object"] == "chat.completion"
    # The new service's own limits are what the headers report.
    assert answer.headers["X-Ratelimit-Limit-Requests"] == "1234"
    assert answer.headers["X-Ratelimit-Limit-Tokens"] == "567890"

    listed = cli_json(server, "service", "list")
    assert "live_new" in [s["api_path"] for s in listed]

    server.cli("service", "delete", "live_new")
    body = post(server, token, "live_new")
    assert (body["error_code"], body["error_msg"]) == (336005, "API name not exist")


def test_update_changes_limits_live(server, token):
    server.cli("service", "publish", "live_rep", "--model", "default", "--rpm", "100", "--tpm", "100000")
    first = requests.post(server.chat_url("live_rep"), params={"access_token": token},
                          json={"messages": HELLO, "max_output_tokens": 2}, timeout=120)
    assert first.headers["X-Ratelimit-Limit-Requests"] == "100"
    server.cli("service", "update", "live_rep", "--rpm", "200", "--tpm", "200000")
    second = requests.post(server.chat_url("live_rep"), params={"access_token": token},
                           json={"messages": HELLO, "max_output_tokens": 2}, timeout=120)
    assert "error_code" not in second.json(), second.text
    assert second.headers["X-Ratelimit-Limit-Requests"] == "200"
    assert second.headers["X-Ratelimit-Limit-Tokens"] == "200000"


def test_publish_twice_without_replace_fails(server):
    server.cli("service", "publish", "live_dup", "--model", "default")
    result = server.cli("service", "publish", "live_dup", "--model", "default", check=False)
    assert result.returncode != 0
    assert "live_dup" in result.stderr


@pytest.mark.parametrize("api_path", ["UPPER", "Svc", "a", "a" * 65, "has space", "dot.path", "slash/x", "中文"])
def test_bad_api_path_is_refused_by_the_cli(server, api_path):
    result = server.cli("service", "publish", api_path, "--model", "default", check=False)
    assert result.returncode != 0
    message = result.stderr + result.stdout
    assert "api_path" in message and "2 to 64" in message, message
    assert "Traceback" not in message
    assert api_path not in [s["api_path"] for s in cli_json(server, "service", "list")]


@pytest.mark.parametrize("api_path", ["ab", "a" * 64, "my_svc-2", "qianfan_bloomz_7b_compressed"])
def test_good_api_path_edges_are_accepted(server, api_path):
    published = cli_json(server, "service", "publish", api_path, "--model", "default")
    assert published["api_path"] == api_path
    server.cli("service", "delete", api_path)


def test_unknown_profile_is_refused(server):
    result = server.cli("service", "publish", "live_prof", "--model", "default", "--profile", "ERNIE-9000", check=False)
    assert result.returncode != 0
    assert "ERNIE-9000" in result.stderr and "Traceback" not in result.stderr


def test_delete_unknown_service_fails(server):
    result = server.cli("service", "delete", "live_none", check=False)
    assert result.returncode != 0 and "live_none" in result.stderr


# ---- apps ---------------------------------------------------------------------------------------

def test_app_create_json(server):
    created = cli_json(server, "app", "create", "live_json")
    assert {"name", "api_key", "secret_key"} <= set(created)
    assert created["name"] == "live_json"
    assert created["api_key"] and created["secret_key"] and created["api_key"] != created["secret_key"]
    # The new app can get a token and call at once.
    token = server.token(created)
    assert token.startswith("24.")
    assert reached_validation(server, token, "svc")
    again = server.cli("app", "create", "live_json", check=False)
    assert again.returncode != 0 and "live_json" in again.stderr


def test_delete_app_revokes_its_token(server):
    creds = cli_json(server, "app", "create", "live_del")
    token = server.token(creds)
    assert reached_validation(server, token, "svc")
    server.cli("app", "delete", "live_del")
    body = post(server, token, "svc")
    assert (body["error_code"], body["error_msg"]) == (110, "Access token invalid or no longer valid")
    # Its credentials no longer get tokens either.
    response = requests.post(f"{server.base_url}/oauth/2.0/token",
                             params={"grant_type": "client_credentials", "client_id": creds["api_key"],
                                     "client_secret": creds["secret_key"]}, json={}, timeout=30)
    assert response.status_code == 401
    assert response.json() == {"error_description": "unknown client id", "error": "invalid_client"}


def test_rotate_now_revokes_old_token_and_new_keys_work(server):
    creds = cli_json(server, "app", "create", "live_rot")
    old_token = server.token(creds)
    assert reached_validation(server, old_token, "svc")
    rotated = cli_json(server, "app", "rotate", "live_rot", "--now")  # the grace period: test_operator_live.py
    assert rotated["name"] == "live_rot"
    assert rotated["api_key"] != creds["api_key"] and rotated["secret_key"] != creds["secret_key"]
    body = post(server, old_token, "svc")
    assert body["error_code"] == 110
    new_token = server.token(rotated)
    answer = post(server, new_token, "svc")
    assert "error_code" not in answer, answer


def test_grant_and_revoke_are_live(server):
    creds = cli_json(server, "app", "create", "live_grant")
    token = server.token(creds)
    server.cli("service", "publish", "live_g1", "--model", "default")
    assert reached_validation(server, token, "live_g1")  # a new app may call every service
    server.cli("app", "grant", "live_grant", "svc")
    assert error_code(post(server, token, "live_g1", EVEN)) == 6
    assert reached_validation(server, token, "svc")
    server.cli("app", "grant", "live_grant", "live_g1")
    assert reached_validation(server, token, "live_g1")
    server.cli("app", "revoke", "live_grant", "live_g1")
    assert error_code(post(server, token, "live_g1", EVEN)) == 6
    server.cli("app", "allow-all", "live_grant")
    assert reached_validation(server, token, "live_g1")


# ---- the database file --------------------------------------------------------------------------

def test_database_file_is_owner_only(server):
    db = server.data_dir / "qfserve.db"
    assert db.is_file()
    assert stat.S_IMODE(db.stat().st_mode) == 0o600, oct(db.stat().st_mode)
    for side in ("qfserve.db-wal", "qfserve.db-shm"):
        path = server.data_dir / side
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, (side, oct(path.stat().st_mode))
