"""AK/SK signatures end to end: the official SDK in IAM mode, hand-signed calls, refusals, the throttle."""

from __future__ import annotations

import time

import pytest
import requests
from conftest import cli_json, start_server, stop_server
from sdk_iam import run_sdk

from qfserve.auth.bce import format_timestamp, sign

SERVICE_LIST = "/wenxinworkshop/service/list"
CHAT = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{}"
HELLO = [{"role": "user", "content": "hi"}]


def signed_post(base_url: str, creds: dict, path: str, body: dict, *, signed=("host", "content-type", "x-bce-date"),
                date: bool = True, secret: str | None = None) -> requests.Response:
    """POST with a bce-auth-v1 signature made by our own signer (one of the strict readings)."""
    host = base_url.removeprefix("http://")
    headers = {"Host": host, "Content-Type": "application/json"}
    if date:
        headers["x-bce-date"] = format_timestamp(time.time())
    headers["Authorization"] = sign(
        creds["access_key"], secret or creds["secret_access_key"], "POST", path, [], headers,
        timestamp=time.time(), expiration=300, signed_headers=list(signed),
    )
    return requests.post(base_url + path, json=body, headers=headers, timeout=120)


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    """A server of our own for refusals, so failures never count against the shared server's address.

    A signed call to an unknown service answers 336005 after authentication, without model work.
    """
    data_dir = tmp_path_factory.mktemp("qfserve-iam")
    creds = cli_json(data_dir, "app", "create", "caller")
    cli_json(data_dir, "service", "publish", "alpha", "--model", "default")  # readiness needs a loaded model
    server = start_server(data_dir, env={"QFSERVE_AUTH_FAIL_LIMIT": "1000"})
    server.creds = creds
    yield server
    stop_server(server)


# --- the official SDK ---------------------------------------------------------------------------------


def test_sdk_iam_sync_chat(server):
    (reply,) = run_sdk(server.base_url, server.creds, f"""
r = qianfan.ChatCompletion().do(endpoint={server.api_path!r}, messages={HELLO!r}, max_output_tokens=4)
emit({{"code": r.code, "body": r.body}})
""")
    assert reply["code"] == 200
    body = reply["body"]
    assert body["object"] == "chat.completion" and body["id"].startswith("as-")
    assert body["result"]
    assert 0 < body["usage"]["completion_tokens"] <= 4


def test_sdk_iam_stream_chat(server):
    chunks = run_sdk(server.base_url, server.creds, f"""
for r in qianfan.ChatCompletion().do(endpoint={server.api_path!r}, messages={HELLO!r}, max_output_tokens=4, stream=True):
    emit(r.body)
""")
    assert chunks and chunks[-1]["is_end"] is True
    assert [c["sentence_id"] for c in chunks] == list(range(len(chunks)))
    assert len({c["id"] for c in chunks}) == 1
    assert "".join(c["result"] for c in chunks)


def test_sdk_wrong_secret_gets_iam_error(auth_server):
    creds = {**auth_server.creds, "secret_access_key": "0" * 32}
    (reply,) = run_sdk(auth_server.base_url, creds, """
try:
    qianfan.ChatCompletion().do(endpoint="nowhere", messages=[{"role": "user", "content": "hi"}])
    emit({"code": None})
except APIError as e:
    emit({"code": e.error_code, "msg": e.error_msg})
""")
    assert reply["code"] == 14
    assert reply["msg"].startswith("IAM Certification failed")  # the SDK appends a hint of its own


# --- hand-signed calls --------------------------------------------------------------------------------


def test_service_list_shows_only_callable_services(auth_server):
    auth_server.cli("service", "publish", "beta", "--model", "default")  # published while it runs
    limited = cli_json(auth_server.data_dir, "app", "create", "limited")
    auth_server.cli("app", "grant", "limited", "alpha")

    def names(creds):
        response = signed_post(auth_server.base_url, creds, SERVICE_LIST, {})
        assert response.status_code == 200
        body = response.json()
        assert body["log_id"] and body["result"]["common"] == []
        return {s["name"]: s["url"] for s in body["result"]["custom"]}

    assert names(limited) == {"alpha": auth_server.base_url + CHAT.format("alpha")}
    assert set(names(auth_server.creds)) >= {"alpha", "beta"}


def test_curl_style_signature_host_only_no_date(auth_server):
    # Auth passes, then the unknown service answers 336005: no model involved.
    response = signed_post(auth_server.base_url, auth_server.creds, CHAT.format("nosuch"), {"messages": HELLO},
                           signed=("host",), date=False)
    assert response.json()["error_code"] == 336005


@pytest.mark.parametrize("case", ["wrong-secret", "unknown-key", "expired", "garbage"])
def test_bad_signature_answers_14(auth_server, case):
    path = CHAT.format("nosuch")
    if case == "wrong-secret":
        response = signed_post(auth_server.base_url, auth_server.creds, path, {}, secret="f" * 32)
    elif case == "unknown-key":
        response = signed_post(auth_server.base_url, {**auth_server.creds, "access_key": "e" * 32}, path, {})
    else:
        stamp = format_timestamp(time.time() - 3600) if case == "expired" else "yesterday"
        authorization = f"bce-auth-v1/{auth_server.creds['access_key']}/{stamp}/300/host/{'0' * 64}"
        response = requests.post(auth_server.base_url + path, json={}, headers={"Authorization": authorization}, timeout=30)
    assert response.status_code == 200
    body = response.json()
    assert list(body) == ["error_code", "error_msg", "id"]
    assert (body["error_code"], body["error_msg"]) == (14, "IAM Certification failed")


def test_failed_auth_throttle(tmp_path):
    """Past 3 failures in 2 s, failures answer 18; a correct signature is never refused meanwhile."""
    creds = cli_json(tmp_path, "app", "create", "caller")
    cli_json(tmp_path, "service", "publish", "svc", "--model", "default")
    server = start_server(tmp_path, env={"QFSERVE_AUTH_FAIL_LIMIT": "3", "QFSERVE_AUTH_FAIL_WINDOW": "2"})
    try:
        path = CHAT.format("nosuch")

        def code(secret=None):
            return signed_post(server.base_url, creds, path, {}, secret=secret).json()["error_code"]

        assert [code("f" * 32) for _ in range(5)] == [14, 14, 14, 18, 18]
        assert code() == 336005  # authenticated; the service just doesn't exist
        time.sleep(2.2)
        assert code("f" * 32) == 14  # a fresh window
    finally:
        stop_server(server)
