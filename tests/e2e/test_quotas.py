"""Quotas end to end on the real server: per-app QPS (18) and daily (17) quotas, the server's
ceiling on requests in flight (4), Retry-After and X-Ratelimit-* on 336501/336502, usage in
`app list`, and what the official SDK does with each code (it retries 18, not 17 or 4).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import requests
from conftest import cli_json, start_server, stop_server
from prometheus_client.parser import text_string_to_metric_families

HELLO = {"messages": [{"role": "user", "content": "hi"}], "max_output_tokens": 2}
QPS_REFUSAL = {"error_code": 18, "error_msg": "Open api qps request limit reached"}
DAILY_REFUSAL = {"error_code": 17, "error_msg": "Open api daily request limit reached"}
IN_FLIGHT_REFUSAL = {"error_code": 4, "error_msg": "Open api request limit reached"}


def chat(url: str, token: str, body: dict = HELLO) -> requests.Response:
    return requests.post(url, params={"access_token": token}, json=body, timeout=300)


def burst(url: str, token: str, n: int) -> list[requests.Response]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: chat(url, token), range(n)))


def without_id(response: requests.Response) -> dict:
    return {k: v for k, v in response.json().items() if k != "id"}


def rejections(server, code: int, reason: str) -> float:
    text = requests.get(f"{server.base_url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name == "qfserve_limit_rejections_total" and sample.labels.get("code") == str(code)
                    and sample.labels.get("reason") == reason):
                return sample.value
    return 0.0


def new_app(server, name: str, *quota_flags: str) -> tuple[dict, str]:
    creds = cli_json(server.data_dir, "app", "create", name, *quota_flags)
    return creds, server.token(creds)


SDK_PRELUDE = """import json, threading, qianfan
from qianfan.errors import APIError
def emit(obj): print('@@' + json.dumps(obj), flush=True)
def call():
    try:
        r = qianfan.ChatCompletion(endpoint='svc').do(messages=[{'role': 'user', 'content': 'hi'}], max_output_tokens=2)
        return {'result': r.body['result']}
    except APIError as exc:
        return {'code': exc.error_code, 'msg': exc.error_msg}
"""


def start_sdk_with_token(server, token: str, code: str, **extra: str) -> subprocess.Popen:
    """The official SDK with a ready access token (QIANFAN_ACCESS_TOKEN): its calls go straight to chat."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QIANFAN_")}
    env.update(QIANFAN_ACCESS_TOKEN=token, QIANFAN_BASE_URL=server.base_url, NO_PROXY="127.0.0.1,localhost",
               no_proxy="127.0.0.1,localhost", **extra)
    return subprocess.Popen([sys.executable, "-c", SDK_PRELUDE + code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_sdk_with_token(server, token: str, code: str, **extra: str) -> subprocess.CompletedProcess:
    process = start_sdk_with_token(server, token, code, **extra)
    try:
        stdout, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def emitted(process: subprocess.CompletedProcess) -> list:
    assert process.returncode == 0, process.stdout + process.stderr
    return [json.loads(line[2:]) for line in process.stdout.splitlines() if line.startswith("@@")]


# --- 18: the app's QPS ---------------------------------------------------------------------------


def test_qps_quota_refuses_with_18_and_retry_after(server):
    _, token = new_app(server, "qps1", "--qps", "1")
    before = rejections(server, 18, "qps")
    responses = burst(server.chat_url(), token, 4)
    ok = [r for r in responses if "error_code" not in r.json()]
    refused = [r for r in responses if "error_code" in r.json()]
    assert len(ok) == 1
    assert [without_id(r) for r in refused] == [QPS_REFUSAL] * 3
    assert {r.headers["Retry-After"] for r in refused} == {"1"}
    assert rejections(server, 18, "qps") - before == 3


def test_sdk_retries_18_and_gets_through(server):
    """Two SDK calls at once under a QPS of 1: one is refused, backs off past the second, and succeeds."""
    _, token = new_app(server, "qps1sdk", "--qps", "1")
    before = rejections(server, 18, "qps")
    process = run_sdk_with_token(
        server, token,
        "results = [None, None]\n"
        "barrier = threading.Barrier(2)\n"
        "def worker(i):\n"
        "    barrier.wait()\n"
        "    results[i] = call()\n"
        "threads = [threading.Thread(target=worker, args=(i,)) for i in range(2)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "emit(results)\n",
        QIANFAN_LLM_API_RETRY_BACKOFF_FACTOR="1.2", QIANFAN_LLM_API_RETRY_JITTER="0",
        QIANFAN_LLM_API_RETRY_MAX_WAIT_INTERVAL="2",
    )
    [results] = emitted(process)
    assert all("result" in r for r in results), results
    assert "got error code 18" in process.stderr
    assert rejections(server, 18, "qps") - before >= 1


# --- 17: the app's requests a day ----------------------------------------------------------------


def test_daily_quota_refuses_with_17_until_midnight_and_update_applies_live(server):
    _, token = new_app(server, "daily2", "--daily-requests", "2")
    assert ["error_code" in chat(server.chat_url(), token).json() for _ in range(2)] == [False, False]
    refused = chat(server.chat_url(), token)
    assert without_id(refused) == DAILY_REFUSAL
    now = datetime.now(ZoneInfo("Asia/Shanghai"))  # the default quota time zone
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=now.tzinfo)
    assert abs(int(refused.headers["Retry-After"]) - (midnight - now).total_seconds()) < 10
    # The operator raises the quota: the running server applies it on the next request.
    updated = cli_json(server.data_dir, "app", "update", "daily2", "--daily-requests", "3")
    assert {k: updated[k] for k in ("name", "qps", "daily_requests")} == {"name": "daily2", "qps": 0, "daily_requests": 3}
    assert "error_code" not in chat(server.chat_url(), token).json()
    assert without_id(chat(server.chat_url(), token)) == DAILY_REFUSAL


def test_sdk_does_not_retry_17(server):
    _, token = new_app(server, "daily1sdk", "--daily-requests", "1")
    assert "error_code" not in chat(server.chat_url(), token).json()
    before = rejections(server, 17, "daily")
    process = run_sdk_with_token(server, token, "emit(call())\n", QIANFAN_LLM_API_RETRY_BACKOFF_FACTOR="0.1")
    [result] = emitted(process)
    assert result["code"] == 17  # the SDK appends its own hint to the wire message
    assert result["msg"].startswith("Open api daily request limit reached")
    assert "got error code" not in process.stderr
    assert rejections(server, 17, "daily") - before == 1  # one attempt, no retry


def test_app_list_shows_use_per_service_against_the_quota(server):
    _, token = new_app(server, "counted", "--daily-requests", "10", "--qps", "50")
    server.cli("service", "publish", "svc_b", "--model", "default", "--rpm", "1000", "--tpm", "10000000")
    usages = {"svc": [], "svc_b": []}
    for api_path, n in (("svc", 2), ("svc_b", 1)):
        for _ in range(n):
            usages[api_path].append(chat(server.chat_url(api_path), token).json()["usage"])
    expected = {
        path: {"requests": len(u), "prompt_tokens": sum(x["prompt_tokens"] for x in u),
               "completion_tokens": sum(x["completion_tokens"] for x in u)}
        for path, u in usages.items()
    }
    deadline = time.monotonic() + 60  # the server writes usage about every second
    while True:
        [row] = [a for a in cli_json(server.data_dir, "app", "list") if a["name"] == "counted"]
        if row["today"]["requests"] == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert (row["qps"], row["daily_requests"]) == (50, 10)
    today = row["today"]
    assert today["services"] == expected
    assert today["requests"] == 3 and today["daily_requests_left"] == 7
    assert today["prompt_tokens"] == sum(e["prompt_tokens"] for e in expected.values())
    assert today["timezone"] == "Asia/Shanghai"
    assert today["day"] == datetime.now(ZoneInfo("Asia/Shanghai")).date().isoformat()
    table = server.cli("app", "list").stdout
    assert "3 / 10" in table and "svc_b: 1 req" in table


# --- 336501 / 336502 carry the budget and Retry-After ----------------------------------------------


def test_rpm_and_tpm_refusals_carry_ratelimit_headers_and_retry_after(server, token):
    server.cli("service", "publish", "rpm1h", "--model", "default", "--rpm", "1", "--tpm", "1000000")
    assert "error_code" not in chat(server.chat_url("rpm1h"), token).json()
    refused = chat(server.chat_url("rpm1h"), token)
    assert refused.json()["error_code"] == 336501
    assert refused.headers["X-Ratelimit-Limit-Requests"] == "1"
    assert refused.headers["X-Ratelimit-Remaining-Requests"] == "0"
    assert refused.headers["X-Ratelimit-Limit-Tokens"] == "1000000"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60

    prompt = chat(server.chat_url(), token).json()["usage"]["prompt_tokens"]
    server.cli("service", "publish", "tpmh", "--model", "default", "--rpm", "100", "--tpm", str(prompt + prompt // 2))
    first = chat(server.chat_url("tpmh"), token)
    refused = chat(server.chat_url("tpmh"), token)
    assert refused.json()["error_code"] == 336502
    assert refused.headers["X-Ratelimit-Limit-Tokens"] == str(prompt + prompt // 2)
    # what is left is what the first request's settled tokens left (the refusal spent nothing)
    assert int(refused.headers["X-Ratelimit-Remaining-Tokens"]) <= int(first.headers["X-Ratelimit-Remaining-Tokens"])
    assert refused.headers["X-Ratelimit-Remaining-Requests"] == "99"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60


# --- 4: the server's ceiling on requests in flight, and the failed-auth throttle's 18 ---------------


@pytest.fixture(scope="module")
def small_server(tmp_path_factory):
    """A server of its own: at most one chat request in flight, and a throttle after one failed auth."""
    data_dir = tmp_path_factory.mktemp("quota-server")
    creds = cli_json(data_dir, "app", "create", "tester")
    cli_json(data_dir, "service", "publish", "svc", "--model", "default", "--rpm", "100000", "--tpm", "100000000")
    srv = start_server(data_dir, "--max-in-flight", "1",
                       env={"QFSERVE_AUTH_FAIL_LIMIT": "1", "QFSERVE_AUTH_FAIL_WINDOW": "10"})
    srv.creds = creds
    yield srv
    stop_server(srv)


LONG = {"messages": [{"role": "user", "content": "Count from one to one hundred."}], "stream": True,
        "max_output_tokens": 300, "min_output_tokens": 300}


class OpenStream:
    """A streaming answer whose first chunk has arrived: it is in flight until `close`."""

    def __init__(self, server, token: str):
        self.response = requests.post(server.chat_url(), params={"access_token": token}, json=LONG, stream=True,
                                      timeout=300)
        # Keep the line iterator alive: dropping it would close the connection early.
        self.lines = self.response.iter_lines()
        assert next(self.lines).startswith(b"data: {")

    def close(self) -> None:
        self.lines.close()
        self.response.close()


def wait_until_admitted(server, token: str) -> dict:
    deadline = time.monotonic() + 120
    while True:
        body = chat(server.chat_url(), token).json()
        if body.get("error_code") != 4 or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_in_flight_ceiling_answers_4_at_once_and_frees_the_slot(small_server):
    token = small_server.token()
    before = rejections(small_server, 4, "in_flight")
    stream = OpenStream(small_server, token)
    try:
        assert without_id(chat(small_server.chat_url(), token)) == IN_FLIGHT_REFUSAL
        refused_stream = chat(small_server.chat_url(), token, {**HELLO, "stream": True})
        assert without_id(refused_stream) == IN_FLIGHT_REFUSAL  # a plain JSON body, not SSE
        assert refused_stream.headers["Content-Type"].startswith("application/json")
    finally:
        stream.close()  # the client hangs up mid-stream: the slot must come back
    assert "error_code" not in wait_until_admitted(small_server, token)
    # a finished sync answer gives its slot back at once
    assert "error_code" not in chat(small_server.chat_url(), token).json()
    assert rejections(small_server, 4, "in_flight") - before == 2


def test_sdk_does_not_retry_4(small_server, tmp_path):
    token = small_server.token()
    go = tmp_path / "go"
    # The SDK comes up first and waits: its one call must land while the stream holds the slot.
    process = start_sdk_with_token(
        small_server, token,
        "import os, time\nemit({'ready': True})\n"
        "while not os.path.exists(os.environ['E2E_GO']): time.sleep(0.01)\n"
        "emit(call())\n",
        QIANFAN_LLM_API_RETRY_BACKOFF_FACTOR="0.1", E2E_GO=str(go),
    )
    try:
        assert json.loads(process.stdout.readline()[2:]) == {"ready": True}
        stream = OpenStream(small_server, token)
        try:
            before = rejections(small_server, 4, "in_flight")
            go.touch()
            stdout, stderr = process.communicate(timeout=300)
        finally:
            stream.close()
    finally:
        if process.poll() is None:
            process.kill()
    [result] = [json.loads(line[2:]) for line in stdout.splitlines() if line.startswith("@@")]
    assert result["code"] == 4 and result["msg"].startswith("Open api request limit reached")
    assert "got error code" not in stderr
    assert rejections(small_server, 4, "in_flight") - before == 1  # one attempt, no retry
    wait_until_admitted(small_server, token)


def test_failed_auth_throttle_is_a_separate_18_that_the_sdk_tries_three_times(small_server):
    """Runs last on its server: it blocks the loopback address for the throttle's window."""
    token = small_server.token()
    before_auth = rejections(small_server, 18, "auth_failures")
    assert chat(small_server.chat_url(), "24.wrong").json()["error_code"] == 110  # the one failure allowed
    blocked = chat(small_server.chat_url(), "24.wrong")  # one failure too many from this address
    assert without_id(blocked) == QPS_REFUSAL
    assert 1 <= int(blocked.headers["Retry-After"]) <= 10
    # Valid credentials are never refused by the throttle (issue 16): the good token still answers.
    assert "error_code" not in chat(small_server.chat_url(), token).json()
    process = run_sdk_with_token(small_server, "24.wrong", "emit(call())\n",
                                 QIANFAN_LLM_API_RETRY_BACKOFF_FACTOR="0.05", QIANFAN_LLM_API_RETRY_JITTER="0",
                                 QIANFAN_LLM_API_RETRY_MAX_WAIT_INTERVAL="0.1")
    [result] = emitted(process)
    assert result["code"] == 18 and result["msg"].startswith("Open api qps request limit reached")
    assert process.stderr.count("got error code 18") == 3
    assert rejections(small_server, 18, "auth_failures") - before_auth == 1 + 3
    assert rejections(small_server, 18, "qps") == 0  # told apart from the app QPS quota
