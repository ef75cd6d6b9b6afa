"""The seed's own examples (single-turn, multi-turn, streaming), run as the seed writes them.

Two forms each, as in ../shared/spec/seed-chat-api.txt: the `curl` pair (token by GET with query
parameters; chat by `curl -X POST '<url>?access_token=…' -d '{…}'`, which sends
`application/x-www-form-urlencoded`) and the `requests` script (token by POST with the body
`json.dumps("")`). Only the host and the credentials are replaced.

Cost: the seed's bodies set no `max_output_tokens`, so each asks for up to 1024 tokens. The three
curl runs are sent exactly as written. The three Python scripts are the seed's code with one
`"max_output_tokens": 24` added to the payload, unless QFSERVE_E2E_SEED_FULL=1 (then verbatim too).
All six start at once (the engine batches them); each test waits for its own.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

SEED_TIMEOUT = 1800  # seconds: a full 1024-token answer on two shared CPU cores is slow
FULL = os.environ.get("QFSERVE_E2E_SEED_FULL") == "1"
ID_RE = re.compile(r"^as-[a-z0-9]{10}$")
SYNC_KEYS = ["id", "object", "created", "result", "is_truncated", "need_clear_history", "finish_reason", "usage"]
STREAM_KEYS = {"id", "object", "created", "sentence_id", "is_end", "is_truncated", "result", "need_clear_history", "usage"}
TOKEN_KEYS = ["refresh_token", "expires_in", "session_key", "access_token", "scope", "session_secret"]

# The seed's assistant turn, character for character (its `\n` are JSON / Python escapes).
ASSISTANT = r"""北京,作为中国的首都和直辖市,是中国政治、文化、科技和国际交往的中心。以下是关于北京的详细介绍:\n\n1. 地理位置:北京位于华北平原的西北部,背靠燕山,毗邻天津市和河北省。\n2. 历史背景:北京有着丰富的历史文化遗产。自元朝开始,这里就是中国的政治中心。明清两代,北京更是成为全国的政治和文化中心。著名的故宫、天坛、长城等历史遗迹见证了北京的辉煌历史。\n3. 文化特色:北京汇聚了中国的传统文化和现代文明。京剧、相声、舞龙舞狮等传统文化活动在这里得以传承和发展。同时,现代艺术、时尚和设计也在北京崭露头角。\n4. 教育资源:北京拥有众多知名高校,如北京大学、清华大学等,为培养人才提供了优质的教育资源。\n5. 科技产业:北京的科技产业发达,尤其是电子信息、生物医药等领域,吸引了众多国内外企业入驻。\n6. 经济发展:作为中国的经济中心之一,北京不仅有着现代服务业的蓬勃发展,还在金融、贸易、旅游等方面取得了显著成就。\n7. 旅游景点:北京拥有丰富的旅游资源,如故宫、天安门广场、长城、颐和园等著名景点,每年都吸引着大量国内外游客。\n8. 美食文化:北京的美食文化独具特色,如北京烤鸭、炸酱面、豆汁等,让游客流连忘返。\n\n总之,北京是一座充满历史底蕴、文化气息和现代文明的城市,也是中国走向世界的重要窗口。"""

CURL_BODIES = {
    "single": """{
"messages": [
{"role":"user","content":"介绍一下北京"}
]
}""",
    "multi": """{
"messages": [
{"role":"user","content":"介绍一下北京"},
{"role":"assistant","content":"%s"},
{"role":"user","content": "北京有哪些著名景点"}
]
}""" % ASSISTANT,
    "stream": """{
"messages": [
{"role":"user", "content": "给我推荐一些自驾游路线"}
],
"stream": true
}""",
}

PY_TOKEN = '''import requests
import json
def get_access_token():
    """
    使用 API Key,Secret Key 获取access_token,替换下列示例中的应用API Key、应用Secret Key
    """
    url = "https://aip.baidubce.com/oauth/2.0/token?grant_type=client_credentials&client_id=[应用API Key]&client_secret=[应用Secret Key]"
    payload = json.dumps("")
    headers = {
        'Content-Type': 'application/json',
        'Accept': 'application/json'
    }
    response = requests.request("POST", url, headers=headers, data=payload)
    return response.json().get("access_token")
'''

PY_MAIN = {
    "single": '''def main():
    url = "https://aip.baidubce.com/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/[创建服务时填写的API名称]?access_token=" + get_access_token()
    payload = json.dumps({
        "messages": [
            {
                "role": "user",
                "content": "介绍一下北京"
            }
        ]
    })
    headers = {
        'Content-Type': 'application/json'
    }
    response = requests.request("POST", url, headers=headers, data=payload)
    print(response.text)
''',
    "multi": '''def main():
    url = "https://aip.baidubce.com/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/[创建服务时填写的API名称]?access_token=" + get_access_token()
    payload = json.dumps({
        "messages": [
            {
                "role": "user",
                "content": "介绍一下北京"
            },
            {
                "role": "assistant",
                "content": "%s"
            },
            {
                "role": "user",
                "content": "北京有哪些著名景点"
            }
        ]
    })
    headers = {
        'Content-Type': 'application/json'
    }
    response = requests.request("POST", url, headers=headers, data=payload)
    print(response.text)
''' % ASSISTANT,
    "stream": '''def main():
    url = "https://aip.baidubce.com/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/[创建服务时填写的API名称]?access_token=" + get_access_token()
    payload = json.dumps({
        "messages": [
            {
                "role": "user",
                "content": "给我推荐一些自驾游路线"
            }
        ],
        "stream": True
    })
    headers = {
        'Content-Type': 'application/json'
    }
    response = requests.request("POST", url, headers=headers, data=payload, stream=True)
    for line in response.iter_lines():
        print(line.decode("UTF-8"))
''',
}
PY_FOOTER = '''
if __name__ == '__main__':
    main()
'''


def _env() -> dict:
    return {**os.environ, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def _parse_headers(raw: str) -> dict[str, str]:
    headers = {}
    for line in raw.splitlines()[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return headers


def _curl_token(server) -> dict:
    # Step one exactly as the seed writes it: a GET with the credentials in the query string.
    url = (f"{server.base_url}/oauth/2.0/token?grant_type=client_credentials"
           f"&client_id={server.creds['api_key']}&client_secret={server.creds['secret_key']}")
    out = subprocess.run(f"curl -sS {shlex.quote(url)}", shell=True, capture_output=True, text=True, timeout=60,
                         env=_env())
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def run_curl(server, example: str) -> dict:
    token = _curl_token(server)["access_token"]
    url = f"{server.chat_url()}?access_token={token}"
    with tempfile.TemporaryDirectory() as tmp:
        header_file = Path(tmp) / "headers"
        # The seed's flags (-X POST … -d '…'); -sS -D only keep curl quiet and save the reply headers.
        command = f"curl -sS -D {header_file} -X POST {shlex.quote(url)} -d {shlex.quote(CURL_BODIES[example])}"
        if example != "stream":
            command = f"set -o pipefail; {command} | iconv -f utf-8 -t utf-8"
        out = subprocess.run(["bash", "-c", command], capture_output=True, timeout=SEED_TIMEOUT, env=_env())
        headers = _parse_headers(header_file.read_text())
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return {"headers": headers, "body": out.stdout}


def seed_script(server, example: str, full: bool = FULL) -> str:
    code = PY_TOKEN + "\n" + PY_MAIN[example] + PY_FOOTER
    code = (code.replace("https://aip.baidubce.com", server.base_url)
            .replace("[应用API Key]", server.creds["api_key"])
            .replace("[应用Secret Key]", server.creds["secret_key"])
            .replace("[创建服务时填写的API名称]", server.api_path))
    if not full:
        code = code.replace('payload = json.dumps({\n', 'payload = json.dumps({\n        "max_output_tokens": 24,\n', 1)
    return code


def run_python(server, example: str) -> dict:
    out = subprocess.run([sys.executable, "-c", seed_script(server, example)], capture_output=True,
                         timeout=SEED_TIMEOUT, env=_env())
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return {"body": out.stdout}


@pytest.fixture(scope="module")
def seed_runs(server):
    """Start all six seed runs at once; each value is a Future of that run's output."""
    pool = ThreadPoolExecutor(max_workers=6)
    runs: dict[tuple[str, str], Future] = {}
    for example in ("single", "multi", "stream"):
        runs[("curl", example)] = pool.submit(run_curl, server, example)
        runs[("python", example)] = pool.submit(run_python, server, example)
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


def _result(runs, form: str, example: str) -> dict:
    return runs[(form, example)].result(timeout=SEED_TIMEOUT)


# ---- checks -------------------------------------------------------------------------------------

def check_usage(usage: dict) -> None:
    assert set(usage) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert all(isinstance(v, int) and not isinstance(v, bool) for v in usage.values())
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] >= 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def check_rate_headers(headers: dict, rpm: int = 100000, tpm: int = 100000000) -> None:
    assert headers["statement"] == "AI-generated"
    assert int(headers["x-ratelimit-limit-requests"]) == rpm
    assert int(headers["x-ratelimit-limit-tokens"]) == tpm
    assert 0 <= int(headers["x-ratelimit-remaining-requests"]) <= rpm
    assert 0 <= int(headers["x-ratelimit-remaining-tokens"]) <= tpm


def check_sync_body(raw: bytes, *, max_tokens: int | None = None) -> dict:
    text = raw.decode("utf-8").rstrip("\n")
    assert "\n" not in text, "a sync answer is one line of compact JSON"
    body = json.loads(text)
    assert "error_code" not in body, body
    assert list(body) == SYNC_KEYS, body
    assert ID_RE.match(body["id"]), body["id"]
    assert body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["created"] > 1_700_000_000
    assert isinstance(body["result"], str)
    assert isinstance(body["is_truncated"], bool)
    assert body["need_clear_history"] is False
    assert body["finish_reason"] in ("normal", "stop", "length", "content_filter")
    assert body["is_truncated"] == (body["finish_reason"] == "length")
    check_usage(body["usage"])
    if max_tokens is not None:
        assert body["usage"]["completion_tokens"] <= max_tokens
    return body


def parse_sse(raw: bytes) -> list[dict]:
    """Strict SSE reading: only `data: <json>` events, each followed by one blank line."""
    text = raw.decode("utf-8")
    assert text.endswith("\n\n"), repr(text[-80:])
    events = text[:-2].split("\n\n")
    chunks = []
    for event in events:
        assert "\n" not in event, f"one line per event: {event!r}"
        assert event.startswith("data: {"), f"not a data line: {event!r}"
        assert event != "data: [DONE]"
        chunks.append(json.loads(event[len("data: "):]))
    return chunks


def check_stream_chunks(chunks: list[dict]) -> str:
    assert chunks, "no events"
    first_id = chunks[0]["id"]
    assert ID_RE.match(first_id)
    for index, chunk in enumerate(chunks):
        assert "error_code" not in chunk, chunk
        assert STREAM_KEYS <= set(chunk), chunk
        assert chunk["id"] == first_id
        assert chunk["object"] == "chat.completion"
        assert chunk["sentence_id"] == index
        assert chunk["is_end"] is (index == len(chunks) - 1)
        assert chunk["need_clear_history"] is False
        check_usage(chunk["usage"])
        assert chunk["usage"]["prompt_tokens"] == chunks[0]["usage"]["prompt_tokens"]
    completions = [c["usage"]["completion_tokens"] for c in chunks]
    assert completions == sorted(completions), "running usage never goes down"
    text = "".join(c["result"] for c in chunks)
    assert text, "the stream carried no text"
    return text


# ---- token step ---------------------------------------------------------------------------------

def test_curl_token_step_get_with_query(server):
    body = _curl_token(server)
    assert list(body) == TOKEN_KEYS
    assert body["expires_in"] == 2592000
    assert re.match(r"^24\.[0-9a-f]{32}\.2592000\.\d+\.282335-\d+$", body["access_token"]), body["access_token"]
    assert re.match(r"^25\.[0-9a-f]{32}\.315360000\.\d+\.282335-\d+$", body["refresh_token"])
    assert re.match(r"^[0-9a-f]{32}$", body["session_secret"])


def test_python_token_step_json_empty_string_body(server):
    code = PY_TOKEN.replace("https://aip.baidubce.com", server.base_url) \
        .replace("[应用API Key]", server.creds["api_key"]).replace("[应用Secret Key]", server.creds["secret_key"])
    code += "\nprint(get_access_token())\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("24.")


# ---- single turn --------------------------------------------------------------------------------

def test_single_turn_curl(seed_runs):
    run = _result(seed_runs, "curl", "single")
    assert run["headers"]["content-type"] == "application/json;charset=utf-8"
    check_rate_headers(run["headers"])
    body = check_sync_body(run["body"], max_tokens=1024)
    assert body["result"]


def test_single_turn_python(seed_runs):
    body = check_sync_body(_result(seed_runs, "python", "single")["body"], max_tokens=None if FULL else 24)
    assert body["result"]


# ---- multi turn ---------------------------------------------------------------------------------

def test_multi_turn_curl(seed_runs):
    run = _result(seed_runs, "curl", "multi")
    check_rate_headers(run["headers"])
    multi = check_sync_body(run["body"])
    single = check_sync_body(_result(seed_runs, "curl", "single")["body"])
    assert multi["usage"]["prompt_tokens"] > single["usage"]["prompt_tokens"] + 100
    assert multi["id"] != single["id"]


def test_multi_turn_python(seed_runs):
    multi = check_sync_body(_result(seed_runs, "python", "multi")["body"])
    single = check_sync_body(_result(seed_runs, "python", "single")["body"])
    assert multi["usage"]["prompt_tokens"] > single["usage"]["prompt_tokens"] + 100
    # The same conversation, whichever client sent it, counts the same prompt tokens.
    curl_multi = check_sync_body(_result(seed_runs, "curl", "multi")["body"])
    assert multi["usage"]["prompt_tokens"] == curl_multi["usage"]["prompt_tokens"]


# ---- streaming ----------------------------------------------------------------------------------

def test_stream_curl(seed_runs):
    run = _result(seed_runs, "curl", "stream")
    assert run["headers"]["content-type"] == "text/event-stream;charset=utf-8"
    check_rate_headers(run["headers"])
    chunks = parse_sse(run["body"])
    check_stream_chunks(chunks)
    assert chunks[-1]["usage"]["completion_tokens"] <= 1024


def test_stream_python(seed_runs):
    # The seed prints each line of iter_lines(): data lines and the blank separators, nothing else.
    lines = _result(seed_runs, "python", "stream")["body"].decode("utf-8").splitlines()
    data = [line for line in lines if line]
    assert data
    assert all(line.startswith("data: ") for line in data), [l for l in data if not l.startswith("data: ")]
    chunks = [json.loads(line[len("data: "):]) for line in data]
    check_stream_chunks(chunks)
    if not FULL:
        assert chunks[-1]["usage"]["completion_tokens"] <= 24
