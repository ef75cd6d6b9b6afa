"""Rate limits end to end: RPM and TPM refusals under load, the SDK's own retry, one budget across processes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import cli_json, free_port, start_server, stop_server
from sdk_iam import start_sdk

HELLO = {"messages": [{"role": "user", "content": "hi"}], "max_output_tokens": 2}
RPM_REFUSAL = {"error_code": 336501, "error_msg": "Rate limit reached for RPM"}
TPM_REFUSAL = {"error_code": 336502, "error_msg": "Rate limit reached for TPM"}


def chat(url: str, token: str) -> requests.Response:
    return requests.post(url, params={"access_token": token}, json=HELLO, timeout=300)


def burst(urls: list[str], token: str) -> list[requests.Response]:
    """All at once: every request is in flight before any answer comes back."""
    with ThreadPoolExecutor(len(urls)) as pool:
        return list(pool.map(lambda url: chat(url, token), urls))


def split(responses):
    ok = [r for r in responses if "error_code" not in r.json()]
    refused = [{k: v for k, v in r.json().items() if k != "id"} for r in responses if "error_code" in r.json()]
    return ok, refused


def test_rpm_under_concurrent_load(server, token):
    server.cli("service", "publish", "rpm3", "--model", "default", "--rpm", "3", "--tpm", "1000000")
    ok, refused = split(burst([server.chat_url("rpm3")] * 8, token))
    assert len(ok) == 3
    assert refused == [RPM_REFUSAL] * 5
    assert sorted(int(r.headers["X-Ratelimit-Remaining-Requests"]) for r in ok) == [0, 1, 2]
    assert {r.headers["X-Ratelimit-Limit-Requests"] for r in ok} == {"3"}


def test_tpm_refusal(server, token):
    # Measure the prompt, then allow one and a half of it: the first request fits, a second can't.
    prompt = chat(server.chat_url(), token).json()["usage"]["prompt_tokens"]
    tpm = prompt + prompt // 2
    server.cli("service", "publish", "tpm", "--model", "default", "--rpm", "100", "--tpm", str(tpm))
    first = chat(server.chat_url("tpm"), token)
    assert "error_code" not in first.json()
    assert int(first.headers["X-Ratelimit-Remaining-Tokens"]) == tpm - prompt
    second = chat(server.chat_url("tpm"), token).json()
    assert {k: v for k, v in second.items() if k != "id"} == TPM_REFUSAL


def test_sdk_retry_on_336501_eventually_succeeds(server, token):
    """The SDK backs off and retries 336501; once the budget allows, its call succeeds."""
    server.cli("service", "publish", "retry", "--model", "default", "--rpm", "1", "--tpm", "1000000")
    assert "error_code" not in chat(server.chat_url("retry"), token).json()  # the one request of this minute
    sdk = start_sdk(
        server.base_url, server.creds,
        'r = qianfan.ChatCompletion().do(endpoint="retry", messages=[{"role": "user", "content": "hi"}], max_output_tokens=2)\n'
        'emit({"result": r.body["result"]})',
        QIANFAN_LLM_API_RETRY_COUNT="20", QIANFAN_LLM_API_RETRY_BACKOFF_FACTOR="0.5",
        QIANFAN_LLM_API_RETRY_MAX_WAIT_INTERVAL="1", QIANFAN_LLM_API_RETRY_JITTER="0",
    )
    refused_once = threading.Event()
    stderr: list[str] = []

    def watch():
        for line in sdk.stderr:
            stderr.append(line)
            if "got error code 336501" in line:
                refused_once.set()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert refused_once.wait(120), "the SDK was never refused:\n" + "".join(stderr)
        # The operator raises the limit while the SDK is backing off: its next retry gets through.
        server.cli("service", "update", "retry", "--rpm", "100")
        stdout = sdk.stdout.read()
        assert sdk.wait(120) == 0, stdout + "".join(stderr)
    finally:
        if sdk.poll() is None:
            sdk.kill()
    watcher.join(5)
    assert '"result"' in stdout


# --- two processes, one Redis budget -------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not installed: install it (apt-get install redis-server) to test the Redis limiter")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path_factory.mktemp("redis"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(10)


def test_two_servers_share_one_redis_budget(tmp_path, redis_url):
    creds = cli_json(tmp_path, "app", "create", "tester")
    cli_json(tmp_path, "service", "publish", "shared", "--model", "default", "--rpm", "4", "--tpm", "1000000")
    servers = []
    try:
        for _ in range(2):
            servers.append(start_server(tmp_path, "--limiter", "redis", "--redis-url", redis_url))
        servers[0].creds = creds
        token = servers[0].token()  # one data dir: the token is good on both
        ok, refused = split(burst([s.chat_url("shared") for s in servers] * 5, token))
        assert len(ok) == 4
        assert refused == [RPM_REFUSAL] * 6
        # Each server alone would have admitted 4 of its 5: the counts below are one shared window.
        assert sorted(int(r.headers["X-Ratelimit-Remaining-Requests"]) for r in ok) == [0, 1, 2, 3]

        # An app's daily quota is one count across both servers too.
        quota_creds = cli_json(tmp_path, "app", "create", "daily3", "--daily-requests", "3")
        cli_json(tmp_path, "service", "publish", "roomy", "--model", "default", "--rpm", "1000", "--tpm", "1000000")
        ok, refused = split(burst([s.chat_url("roomy") for s in servers] * 4, servers[0].token(quota_creds)))
        assert len(ok) == 3
        assert refused == [{"error_code": 17, "error_msg": "Open api daily request limit reached"}] * 5
    finally:
        for server in servers:
            stop_server(server)
