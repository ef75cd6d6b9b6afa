"""Issue 17 against the running server: rotation without an outage, the access log, the SDK naming a
model, the drain, the log's manners, and the demo's first five minutes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import orjson
import requests
from conftest import cli_json, start_server, stop_server

from qfserve.auth.bce import format_timestamp, sign

HELLO = [{"role": "user", "content": "hi"}]
EVEN = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]


def chat(server, token: str, api_path: str, messages=HELLO, **extra) -> dict:
    response = requests.post(server.chat_url(api_path), params={"access_token": token},
                             json={"messages": messages, "max_output_tokens": 2, **extra}, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def token_response(server, creds: dict) -> requests.Response:
    return requests.post(f"{server.base_url}/oauth/2.0/token",
                         params={"grant_type": "client_credentials", "client_id": creds["api_key"],
                                 "client_secret": creds["secret_key"]}, json={}, timeout=30)


def signed_chat(server, access_key: str, secret: str, api_path: str) -> dict:
    path = f"/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{api_path}"
    headers = {"Host": server.base_url.removeprefix("http://"), "Content-Type": "application/json",
               "x-bce-date": format_timestamp(time.time())}
    headers["Authorization"] = sign(access_key, secret, "POST", path, [], headers, timestamp=time.time(),
                                    expiration=300, signed_headers=["host", "content-type", "x-bce-date"])
    return requests.post(server.base_url + path, json={"messages": EVEN}, headers=headers, timeout=60).json()


def reaches_the_service(body: dict) -> bool:
    """Auth passed: the body's own error (an even number of messages) came back."""
    return body.get("error_code") == 336006


# ---- rotation with a grace period ----------------------------------------------------------------

def test_rotation_keeps_old_credentials_working_until_now(server):
    old = cli_json(server.data_dir, "app", "create", "rot_grace")
    old_token = server.token(old)
    rotated = cli_json(server.data_dir, "app", "rotate", "rot_grace")  # default grace: 24 h
    assert 23 * 3600 < rotated["old_credentials_valid_until"] - time.time() <= 24 * 3600
    # Clients that have not switched yet: old token, old API Key / Secret Key, old IAM pair.
    assert reaches_the_service(chat(server, old_token, "svc", EVEN))
    fresh_from_old_keys = token_response(server, old)
    assert fresh_from_old_keys.status_code == 200, fresh_from_old_keys.text
    assert reaches_the_service(chat(server, fresh_from_old_keys.json()["access_token"], "svc", EVEN))
    assert reaches_the_service(signed_chat(server, old["access_key"], old["secret_access_key"], "svc"))
    # Switched clients: the new pairs work too.
    new_token = server.token(rotated)
    assert reaches_the_service(chat(server, new_token, "svc", EVEN))
    assert reaches_the_service(signed_chat(server, rotated["access_key"], rotated["secret_access_key"], "svc"))

    # --now: every old pair and every token so far stops at once.
    cli_json(server.data_dir, "app", "rotate", "rot_grace", "--now")
    for token in (old_token, fresh_from_old_keys.json()["access_token"], new_token):
        assert chat(server, token, "svc", EVEN)["error_code"] == 110
    for creds in (old, rotated):
        refused = token_response(server, creds)
        assert (refused.status_code, refused.json()["error"]) == (401, "invalid_client")
        assert signed_chat(server, creds["access_key"], creds["secret_access_key"], "svc")["error_code"] == 14


# ---- the access log ------------------------------------------------------------------------------

def access_lines(server) -> list[str]:
    return [line for line in server.log().splitlines() if "qfserve.access" in line]


def test_access_log_has_one_line_per_request_without_user_text(server, token):
    secret_words = "zebra-quartz-7731 我的秘密"
    answer = chat(server, token, "svc", [{"role": "user", "content": secret_words}])
    bad = chat(server, "24.nosuchtoken", "svc", EVEN)
    time.sleep(0.3)
    lines = access_lines(server)
    [ok] = [line for line in lines if f"request_id={answer['id']}" in line]
    assert "app=tester" in ok and "service=svc" in ok and "status=200" in ok and " code=0 " in ok
    assert f"prompt_tokens={answer['usage']['prompt_tokens']}" in ok
    assert f"completion_tokens={answer['usage']['completion_tokens']}" in ok
    assert re.search(r"latency_ms=\d+(\.\d+)?$", ok), ok
    [refused] = [line for line in lines if f"request_id={bad['id']}" in line]
    assert "code=110" in refused and "app=-" in refused
    log = server.log()
    assert "zebra-quartz" not in log and "我的秘密" not in log
    assert "access_token" not in log and token not in log


def test_access_log_counts_streamed_tokens(server, token):
    with requests.post(server.chat_url("svc"), params={"access_token": token}, stream=True, timeout=120,
                       json={"messages": HELLO, "max_output_tokens": 5, "stream": True}) as response:
        chunks = [orjson.loads(line[6:]) for line in response.iter_lines() if line]
    time.sleep(0.3)
    [line] = [line for line in access_lines(server) if f"request_id={chunks[-1]['id']}" in line]
    assert f"completion_tokens={chunks[-1]['usage']['completion_tokens']}" in line and " code=0 " in line


# ---- the SDK naming a model ----------------------------------------------------------------------

def test_sdk_naming_a_model_reaches_the_for_model_service(server):
    published = cli_json(server.data_dir, "service", "publish", "--for-model", "ERNIE-Speed-8K",
                         "--rpm", "100000", "--tpm", "100000000")
    assert published["api_path"] == "ernie_speed"
    script = (
        "import json, qianfan\n"
        "r = qianfan.ChatCompletion(model='ERNIE-Speed-8K').do(messages=[{'role': 'user', 'content': 'hi'}],"
        " max_output_tokens=2)\n"
        "print('@@' + json.dumps(r.body))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("QIANFAN_")}
    env.update(QIANFAN_AK=server.creds["api_key"], QIANFAN_SK=server.creds["secret_key"],
               QIANFAN_BASE_URL=server.base_url, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    [body] = [json.loads(line[2:]) for line in out.stdout.splitlines() if line.startswith("@@")]
    assert "error_code" not in body and body["object"] == "chat.completion", body
    time.sleep(0.3)
    assert any(f"request_id={body['id']}" in line and "service=ernie_speed" in line for line in access_lines(server))


# ---- JSON logs, quiet libraries, the drain -------------------------------------------------------

def test_json_logs_quiet_libraries_and_drain(tmp_path):
    creds = cli_json(tmp_path, "app", "create", "a")
    cli_json(tmp_path, "service", "publish", "svc", "--model", "default", "--rpm", "100000", "--tpm", "100000000")
    server = start_server(tmp_path, "--log-json", "--drain-seconds", "240", "--threads", "1", new_session=True)
    server.creds = creds
    try:
        token = server.token()
        # Memory recall runs bm25s, which sets its own logger to DEBUG.
        remembered = chat(server, token, "svc", [{"role": "user", "content": "我叫李雷，住在杭州"}],
                          enable_user_memory=True, user_id="u1", user_memory_extract_level=1)
        time.sleep(1.0)
        recalled = chat(server, token, "svc", [{"role": "user", "content": "我住在哪里"}],
                        enable_user_memory=True, user_id="u1", user_memory_level=1)
        assert "error_code" not in remembered and "error_code" not in recalled, (remembered, recalled)
        time.sleep(0.3)
        entries = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        access = [e for e in entries if e["logger"] == "qfserve.access" and e.get("request_id") == recalled["id"]]
        assert len(access) == 1, entries[-5:]
        assert (access[0]["app"], access[0]["service"], access[0]["code"], access[0]["status"]) == ("a", "svc", 0, 200)
        assert access[0]["prompt_tokens"] == recalled["usage"]["prompt_tokens"]
        assert not [e for e in entries if e["level"] == "debug"], [e for e in entries if e["level"] == "debug"][:3]

        # A long stream, then SIGTERM: the port stays open, /readyz says 503, new chats get 2,
        # the stream finishes, the process exits.
        lines: list[bytes] = []
        # Long enough that it is still running after SIGTERM, however fast the machine.
        body = {"messages": [{"role": "user", "content": "Write a long story about a dragon."}], "stream": True,
                "max_output_tokens": 1024, "min_output_tokens": 1024}

        def read_stream():
            with requests.post(server.chat_url("svc"), params={"access_token": token}, json=body, stream=True,
                               timeout=300) as response:
                lines.extend(line for line in response.iter_lines() if line)

        reader = threading.Thread(target=read_stream)
        reader.start()
        deadline = time.monotonic() + 120
        while not lines and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lines, "the stream never started"
        os.killpg(server.process.pid, signal.SIGTERM)
        time.sleep(0.5)
        ready = requests.get(f"{server.base_url}/readyz", timeout=5)
        assert ready.status_code == 503
        refused = chat(server, token, "svc")
        assert (refused["error_code"], refused["error_msg"]) == (2, "Service temporarily unavailable")
        reader.join(timeout=280)
        chunks = [orjson.loads(line[len(b"data: "):]) for line in lines]
        assert chunks[-1]["is_end"] is True and chunks[-1]["usage"]["completion_tokens"] == 1024
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
        log = server.log()
        assert "draining" in log and "Traceback" not in log
    finally:
        stop_server(server)


# ---- the first five minutes ----------------------------------------------------------------------

def test_demo_prints_a_streaming_chat_command_that_works(tmp_path):
    server = start_server(tmp_path, "--demo")
    try:
        printed = server.log()
        assert "tiny" in printed and "service publish NAME --model /path/model.gguf" in printed
        commands = [line for line in printed.splitlines() if line.startswith(("TOKEN=", "curl "))]
        assert len(commands) == 2, printed
        body = json.loads(re.search(r"-d '(.*)'$", commands[1]).group(1))
        assert body["stream"] is True and body["max_output_tokens"] == 128
        # Run them as printed (the printed address is the server's own).
        out = subprocess.run(["bash", "-c", "\n".join(commands)], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        events = [json.loads(line[6:]) for line in out.stdout.splitlines() if line.startswith("data: ")]
        assert len(events) >= 2 and events[-1]["is_end"] is True and "error_code" not in events[-1], out.stdout[-500:]
        assert 0 < events[-1]["usage"]["completion_tokens"] <= 128
    finally:
        stop_server(server)
