"""The v2 surface end to end, with real, unmodified clients against a real server and the real model:
the official `openai` SDK (sync, stream with include_usage, async, its exception types), the `qianfan`
SDK in v2 mode (API key; AK/SK through /v1/BCE-BEARER/token), LangChain's `ChatOpenAI`, the same
service answering v1 and v2 with the same text, moderation, logprobs, and every error path.

The module has its own server: its refusals must not count against the shared server's failed-auth
throttle, and it carries a lexicon for the moderation cases. Answers are made deterministic with
top_p 0 (only the most likely token survives), so texts can be compared across clients.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import time
from types import SimpleNamespace

import openai
import pytest
import requests
from conftest import cli, cli_json, start_server, stop_server

from qfserve.auth.bce import format_timestamp, sign

ID_RE = re.compile(r"^as-[a-z0-9]{10}$")
PROMPT = [{"role": "user", "content": "Name three colours."}]
GREEDY = {"top_p": 0, "max_tokens": 24}
HI = [{"role": "user", "content": "hi"}]
BLOCKED, CAUTION = "zzblockedzz", "zzcautionzz"


@pytest.fixture(scope="module")
def v2(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("qfserve-v2")
    lexicon = data_dir / "deny.tsv"
    lexicon.write_text(f"{BLOCKED}\tdemo\t3\n{CAUTION}\tdemo\t2\n")
    creds = cli_json(data_dir, "app", "create", "v2app")
    limited = cli_json(data_dir, "app", "create", "limited")
    for api_path, rpm, tpm in [("v2svc", 100000, 100000000), ("other", 100000, 100000000),
                               ("tight", 1, 100000000), ("tpmsvc", 100000, 40)]:
        cli_json(data_dir, "service", "publish", api_path, "--model", "default", "--profile", "ERNIE-Speed-8K",
                 "--rpm", str(rpm), "--tpm", str(tpm))
    cli(data_dir, "app", "grant", "limited", "v2svc")
    server = start_server(data_dir, "--safety-lexicon", str(lexicon), env={"QFSERVE_AUTH_FAIL_LIMIT": "1000"})
    server.creds = creds
    yield SimpleNamespace(server=server, creds=creds, limited=limited, data_dir=data_dir,
                          url=server.base_url + "/v2", key=creds["v2_api_key"])
    stop_server(server)


def client(v2, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=v2.url, api_key=key or v2.key, max_retries=0, timeout=300)


def post(v2, body=None, *, key: str | None = "default", raw: bytes | None = None, headers: dict | None = None,
         method: str = "POST", path: str = "/chat/completions") -> requests.Response:
    sent = dict(headers or {})
    if key is not None:
        sent["Authorization"] = f"Bearer {v2.key if key == 'default' else key}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    return requests.request(method, v2.url + path, data=data, headers=sent, timeout=300)


# ---- the openai SDK ------------------------------------------------------------------------------

def test_openai_sync_answer_headers_and_qianfan_fields(v2):
    raw = client(v2).chat.completions.with_raw_response.create(model="v2svc", messages=PROMPT, max_tokens=16)
    answer = raw.parse()
    assert ID_RE.match(answer.id) and answer.object == "chat.completion" and answer.model == "v2svc"
    [choice] = answer.choices
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert choice.model_extra["flag"] == 0 and choice.model_extra["need_clear_history"] is False
    assert "ban_round" not in choice.model_extra
    usage = answer.usage
    assert usage.prompt_tokens > 0 and 0 < usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    headers = raw.headers
    assert headers["statement"] == "AI-generated"
    assert headers["x-ratelimit-limit-requests"] == "100000"
    assert headers["x-ratelimit-limit-input-tokens"] == headers["x-ratelimit-limit-output-tokens"] == "100000000"
    assert 0 <= int(headers["x-ratelimit-remaining-requests"]) < 100000
    assert int(headers["x-ratelimit-remaining-input-tokens"]) == int(headers["x-ratelimit-remaining-output-tokens"])
    assert int(headers["x-ratelimit-remaining-input-tokens"]) < 100000000


def test_openai_stream_with_include_usage_matches_the_sync_text(v2):
    sdk = client(v2)
    whole = sdk.chat.completions.create(model="v2svc", messages=PROMPT, **GREEDY)
    chunks = list(sdk.chat.completions.create(model="v2svc", messages=PROMPT, stream=True,
                                              stream_options={"include_usage": True}, **GREEDY))
    *answer_chunks, usage_chunk = chunks
    assert usage_chunk.choices == [] and usage_chunk.usage.total_tokens == whole.usage.total_tokens
    assert all(c.usage is None for c in answer_chunks)
    assert {c.id for c in chunks} == {chunks[0].id} and ID_RE.match(chunks[0].id)
    assert answer_chunks[0].choices[0].delta.role == "assistant"
    assert answer_chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    texts = [c.choices[0].delta.content for c in answer_chunks if c.choices[0].delta.content]
    assert len(texts) > 3, "token deltas, not sentence chunks"
    assert "".join(texts) == whole.choices[0].message.content
    # Without stream_options, no usage anywhere.
    plain = list(sdk.chat.completions.create(model="v2svc", messages=PROMPT, stream=True, **GREEDY))
    assert all(c.usage is None and c.choices for c in plain)
    assert "".join(c.choices[0].delta.content or "" for c in plain) == whole.choices[0].message.content


async def test_openai_async_calls_and_stream(v2):
    sdk = openai.AsyncOpenAI(base_url=v2.url, api_key=v2.key, max_retries=0, timeout=300)
    answers = await asyncio.gather(*(sdk.chat.completions.create(model="v2svc", messages=PROMPT, **GREEDY)
                                     for _ in range(3)))
    texts = {a.choices[0].message.content for a in answers}
    assert len(texts) == 1 and texts.pop()
    stream = await sdk.chat.completions.create(model="v2svc", messages=PROMPT, stream=True, **GREEDY)
    streamed = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert streamed == answers[0].choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        await openai.AsyncOpenAI(base_url=v2.url, api_key="bce-v3/ALTAK-x/y", max_retries=0).models.list()
    await sdk.close()


def test_openai_errors_are_its_own_exception_types(v2):
    with pytest.raises(openai.AuthenticationError) as bad_key:
        client(v2, "bce-v3/ALTAK-notakey/0000").chat.completions.create(model="v2svc", messages=HI, max_tokens=2)
    assert (bad_key.value.status_code, bad_key.value.code, bad_key.value.type) == (401, "invalid_iam_token",
                                                                                   "access_denied")
    with pytest.raises(openai.NotFoundError) as unknown:
        client(v2).chat.completions.create(model="nosuch", messages=HI, max_tokens=2)
    assert unknown.value.code == "invalid_model" and "nosuch" in unknown.value.message
    with pytest.raises(openai.PermissionDeniedError) as denied:
        client(v2, v2.limited["v2_api_key"]).chat.completions.create(model="other", messages=HI, max_tokens=2)
    assert denied.value.code == "no_permission"
    with pytest.raises(openai.BadRequestError) as two:
        client(v2).chat.completions.create(model="v2svc", messages=HI, max_tokens=2, n=2)
    assert two.value.code == "invalid_argument" and "`n`" in two.value.message
    with pytest.raises(openai.BadRequestError) as tools:
        client(v2).chat.completions.create(model="v2svc", messages=HI, max_tokens=2, tools=[
            {"type": "function", "function": {"name": "f f", "parameters": {"type": "object", "properties": {}}}}])
    assert tools.value.body["message"].startswith("`tools[0].function.name` must be")


def test_openai_rate_limit_errors_say_when_to_retry(v2):
    sdk = client(v2)
    sdk.chat.completions.create(model="tight", messages=HI, max_tokens=2)  # the one request of this minute
    with pytest.raises(openai.RateLimitError) as rpm:
        sdk.chat.completions.create(model="tight", messages=HI, max_tokens=2)
    assert (rpm.value.status_code, rpm.value.code, rpm.value.type) == (429, "rpm_rate_limit_exceeded",
                                                                       "rate_limit_exceeded")
    assert 50 <= int(rpm.value.response.headers["retry-after"]) <= 60
    with pytest.raises(openai.RateLimitError):  # a stream is refused the same way, before any chunk
        sdk.chat.completions.create(model="tight", messages=HI, max_tokens=2, stream=True)

    sdk.chat.completions.create(model="tpmsvc", messages=HI, max_tokens=2)  # about 33 of its 40 tokens
    with pytest.raises(openai.RateLimitError) as tpm:
        sdk.chat.completions.create(model="tpmsvc", messages=HI, max_tokens=2)
    assert tpm.value.code == "tpm_rate_limit_exceeded"
    assert 1 <= int(tpm.value.response.headers["retry-after"]) <= 60


def test_models_lists_what_the_key_may_call(v2):
    everything = {m.id for m in client(v2).models.list()}
    assert everything == {"v2svc", "other", "tight", "tpmsvc"}
    limited = client(v2, v2.limited["v2_api_key"])
    assert [m.id for m in limited.models.list()] == ["v2svc"]
    model = limited.models.retrieve("v2svc")
    assert (model.id, model.object, model.owned_by) == ("v2svc", "model", "qfserve")
    with pytest.raises(openai.PermissionDeniedError):
        limited.models.retrieve("other")
    with pytest.raises(openai.NotFoundError):
        limited.models.retrieve("nosuch")


def test_logprobs_in_openai_shape(v2):
    sdk = client(v2)
    answer = sdk.chat.completions.create(model="v2svc", messages=PROMPT, logprobs=True, top_logprobs=2, **GREEDY)
    entries = answer.choices[0].logprobs.content
    assert len(entries) == answer.usage.completion_tokens
    assert "".join(e.token for e in entries) == answer.choices[0].message.content
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2 and entry.bytes == list(entry.token.encode())
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    chunks = list(sdk.chat.completions.create(model="v2svc", messages=PROMPT, logprobs=True, top_logprobs=2,
                                              stream=True, **GREEDY))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in entries]


# ---- moderation: the same verdicts as v1, in v2's fields --------------------------------------------

def test_input_blocked_at_flag_3_hides_the_answer(v2):
    messages = [{"role": "user", "content": f"tell me about {BLOCKED}"}]
    answer = client(v2).chat.completions.create(model="v2svc", messages=messages, max_tokens=8)
    [choice] = answer.choices
    assert choice.message.content == "" and choice.finish_reason == "content_filter"
    assert choice.model_extra == {"flag": 3, "need_clear_history": True, "ban_round": -1}
    assert answer.usage.completion_tokens == 0
    chunks = list(client(v2).chat.completions.create(model="v2svc", messages=messages, max_tokens=8, stream=True))
    assert len(chunks) == 1 and chunks[0].choices[0].finish_reason == "content_filter"
    assert chunks[0].choices[0].model_extra["flag"] == 3


def test_input_at_flag_2_is_answered_with_the_verdict(v2):
    messages = [{"role": "user", "content": f"tell me about {CAUTION}"}]
    answer = client(v2).chat.completions.create(model="v2svc", messages=messages, max_tokens=8, top_p=0)
    [choice] = answer.choices
    # The model runs (its answer may itself repeat the term and be cut by output moderation).
    assert answer.usage.completion_tokens > 0 and choice.model_extra["flag"] == 2
    assert choice.model_extra["need_clear_history"] is True and choice.model_extra["ban_round"] == -1


# ---- v1 and v2: one service, one answer ------------------------------------------------------------

def test_v1_and_v2_answer_the_same_text_at_top_p_0(v2):
    v1 = requests.post(v2.server.chat_url("v2svc"), params={"access_token": v2.server.token()},
                       json={"messages": PROMPT, "top_p": 0, "max_output_tokens": 24}, timeout=300).json()
    answer = client(v2).chat.completions.create(model="v2svc", messages=PROMPT, **GREEDY)
    assert v1["result"] and answer.choices[0].message.content == v1["result"]
    assert answer.usage.model_dump(exclude_none=True) == v1["usage"]


def test_a_system_turn_is_v1s_system(v2):
    system = "You answer in French."
    v1 = requests.post(v2.server.chat_url("v2svc"), params={"access_token": v2.server.token()},
                       json={"messages": PROMPT, "system": system, "top_p": 0, "max_output_tokens": 24},
                       timeout=300).json()
    answer = client(v2).chat.completions.create(
        model="v2svc", messages=[{"role": "system", "content": system}, *PROMPT], **GREEDY)
    assert answer.choices[0].message.content == v1["result"]
    assert answer.usage.prompt_tokens == v1["usage"]["prompt_tokens"]


# ---- LangChain ---------------------------------------------------------------------------------------

def test_langchain_chat_openai(v2):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model="v2svc", base_url=v2.url, api_key=v2.key, max_tokens=24, top_p=0, max_retries=0,
                     timeout=300)
    reply = llm.invoke("Name three colours.")
    expected = client(v2).chat.completions.create(model="v2svc", messages=PROMPT, **GREEDY)
    assert reply.content == expected.choices[0].message.content
    assert reply.response_metadata["finish_reason"] in ("stop", "length")
    assert reply.usage_metadata["total_tokens"] == expected.usage.total_tokens
    streamed = "".join(chunk.content for chunk in llm.stream("Name three colours."))
    assert streamed == reply.content


# ---- the qianfan SDK in v2 mode -----------------------------------------------------------------------

QIANFAN_PRELUDE = """
import json, qianfan
def emit(obj): print("@@" + json.dumps(obj, ensure_ascii=False), flush=True)
MESSAGES = [{"role": "user", "content": "Name three colours."}]
"""


def run_qianfan(code: str, **env: str) -> list[dict]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("QIANFAN_")}
    environment.update(env, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    out = subprocess.run([sys.executable, "-c", QIANFAN_PRELUDE + code], env=environment, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"qianfan SDK failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return [json.loads(line[2:]) for line in out.stdout.splitlines() if line.startswith("@@")]


def test_qianfan_sdk_with_an_api_key(v2):
    expected = client(v2).chat.completions.create(model="v2svc", messages=PROMPT, **GREEDY).choices[0].message.content
    results = run_qianfan(f"""
client = qianfan.Qianfan(api_key={v2.key!r})
r = client.chat.completions.create(model="v2svc", messages=MESSAGES, top_p=0, max_completion_tokens=24)
emit({{"text": r.choices[0].message.content, "flag": r.choices[0].flag, "usage": r.usage.total_tokens}})
text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
    model="v2svc", messages=MESSAGES, top_p=0, max_completion_tokens=24, stream=True))
emit({{"text": text}})
r = qianfan.ChatCompletion(version=2).do(model="v2svc", messages=MESSAGES, top_p=0, max_completion_tokens=24)
emit({{"text": r.body["choices"][0]["message"]["content"], "auth": r.request.headers["Authorization"]}})
""", QIANFAN_CONSOLE_API_BASE_URL=v2.server.base_url, QIANFAN_BEARER_TOKEN=v2.key)
    assert [r["text"] for r in results] == [expected] * 3
    assert results[0]["flag"] == 0 and results[0]["usage"] > 0
    assert results[2]["auth"] == f"Bearer {v2.key}"


def test_qianfan_sdk_with_ak_sk_through_the_bearer_endpoint(v2):
    expected = client(v2).chat.completions.create(model="v2svc", messages=PROMPT, **GREEDY).choices[0].message.content
    results = run_qianfan("""
chat = qianfan.ChatCompletion(version=2)
r = chat.do(model="v2svc", messages=MESSAGES, top_p=0, max_completion_tokens=24)
emit({"text": r.body["choices"][0]["message"]["content"], "auth": r.request.headers["Authorization"]})
text = "".join(c.body["choices"][0]["delta"].get("content", "") for c in chat.do(
    model="v2svc", messages=MESSAGES, top_p=0, max_completion_tokens=24, stream=True))
emit({"text": text})
""", QIANFAN_ACCESS_KEY=v2.creds["access_key"], QIANFAN_SECRET_KEY=v2.creds["secret_access_key"],
        QIANFAN_CONSOLE_API_BASE_URL=v2.server.base_url, QIANFAN_IAM_BASE_URL=v2.server.base_url)
    assert [r["text"] for r in results] == [expected, expected]
    bearer = results[0]["auth"].removeprefix("Bearer ")
    assert re.fullmatch(r"bce-v3/ALTAK-[A-Za-z0-9]{21}/[0-9a-f]{40}", bearer) and bearer != v2.key


# ---- /v1/BCE-BEARER/token ----------------------------------------------------------------------------

def bearer_request(v2, creds: dict, expire: str | None = "3600", *, secret: str | None = None) -> requests.Response:
    path = "/v1/BCE-BEARER/token"
    query = [("expireInSeconds", expire)] if expire is not None else []
    host = v2.server.base_url.removeprefix("http://")
    headers = {"Host": host, "x-bce-date": format_timestamp(time.time())}
    headers["Authorization"] = sign(creds["access_key"], secret or creds["secret_access_key"], "GET", path, query,
                                    headers, timestamp=time.time(), expiration=300,
                                    signed_headers=["host", "x-bce-date"])
    return requests.get(v2.server.base_url + path, params=query, headers=headers, timeout=30)


def test_bearer_token_endpoint_issues_expiring_tokens(v2):
    response = bearer_request(v2, v2.creds)
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["userId", "token", "status", "createTime", "expireTime"] and body["status"] == "enable"
    created = time.mktime(time.strptime(body["createTime"], "%Y-%m-%dT%H:%M:%SZ"))
    expires = time.mktime(time.strptime(body["expireTime"], "%Y-%m-%dT%H:%M:%SZ"))
    assert expires - created == 3600
    assert post(v2, {"model": "v2svc", "messages": HI, "max_tokens": 2}, key=body["token"]).status_code == 200
    # A bearer token is not a v1 access token.
    v1 = requests.post(v2.server.chat_url("v2svc"), params={"access_token": body["token"]},
                       json={"messages": HI, "max_output_tokens": 2}, timeout=60).json()
    assert v1["error_code"] == 110

    short = bearer_request(v2, v2.creds, "1").json()["token"]
    time.sleep(2.1)
    expired = post(v2, {"model": "v2svc", "messages": HI, "max_tokens": 2}, key=short)
    assert expired.status_code == 401 and expired.json()["error"] == {
        "code": "invalid_iam_token", "message": "Bearer token expired", "type": "access_denied"}


@pytest.mark.parametrize("case", ["bad-secret", "unsigned", "expire-0", "expire-text", "expire-too-long"])
def test_bearer_token_endpoint_refusals(v2, case):
    if case == "bad-secret":
        response = bearer_request(v2, v2.creds, secret="0" * 32)
    elif case == "unsigned":
        response = requests.get(v2.server.base_url + "/v1/BCE-BEARER/token", params={"expireInSeconds": "60"},
                                timeout=30)
    else:
        expire = {"expire-0": "0", "expire-text": "soon", "expire-too-long": str(30 * 24 * 3600 + 1)}[case]
        response = bearer_request(v2, v2.creds, expire)
    body = response.json()
    assert list(body) == ["requestId", "code", "message"] and ID_RE.match(body["requestId"])
    if case.startswith("expire"):
        assert (response.status_code, body["code"]) == (400, "InvalidParameterValue")
        assert "expireInSeconds" in body["message"]
    else:
        assert (response.status_code, body["code"]) == (403, "AccessDenied")


def test_rotate_replaces_the_v2_key_and_revokes_bearer_tokens(v2):
    creds = cli_json(v2.data_dir, "app", "create", "rotating")
    bearer = bearer_request(v2, creds).json()["token"]
    body = {"model": "v2svc", "messages": HI, "max_tokens": 2}
    assert post(v2, body, key=creds["v2_api_key"]).status_code == 200
    rotated = cli_json(v2.data_dir, "app", "rotate", "rotating", "--now")  # no grace: the old key ends now
    assert rotated["v2_api_key"] != creds["v2_api_key"]
    for old in (creds["v2_api_key"], bearer):
        refused = post(v2, body, key=old)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_iam_token"
    assert post(v2, body, key=rotated["v2_api_key"]).status_code == 200


def test_app_list_never_shows_the_v2_key(v2):
    listing = cli(v2.data_dir, "app", "list", "--json").stdout
    assert v2.key not in listing and "ALTAK" not in listing


# ---- every error path: status, code, type -------------------------------------------------------------

LONG = "a" * 11201
ERROR_CASES = [
    # (id, request kwargs, status, code, type, words in the message)
    ("no-key", dict(body={"model": "v2svc", "messages": HI}, key=None), 401, "invalid_iam_token", "access_denied",
     ["Authorization"]),
    ("basic-auth", dict(body={"model": "v2svc", "messages": HI}, key=None, headers={"Authorization": "Basic eDp5"}),
     401, "invalid_iam_token", "access_denied", []),
    ("unknown-key", dict(body={"model": "v2svc", "messages": HI}, key="bce-v3/ALTAK-nope/0"), 401,
     "invalid_iam_token", "access_denied", ["invalid"]),
    ("not-json", dict(raw=b"{\"model\": "), 400, "malformed_json", "invalid_request_error", []),
    ("array-body", dict(raw=b"[]"), 400, "malformed_json", "invalid_request_error", []),
    ("no-model", dict(body={"messages": HI}), 400, "invalid_model", "invalid_request_error", ["model is empty"]),
    ("unknown-model", dict(body={"model": "nosuch", "messages": HI}), 404, "invalid_model", "invalid_request_error",
     ["nosuch"]),
    ("no-messages", dict(body={"model": "v2svc"}), 400, "invalid_messages", "invalid_request_error", ["messages"]),
    ("even-messages", dict(body={"model": "v2svc", "messages": [*HI, {"role": "assistant", "content": "a"}]}),
     400, "invalid_messages", "invalid_request_error", ["odd"]),
    ("blank-content", dict(body={"model": "v2svc", "messages": [{"role": "user", "content": " "}]}), 400,
     "invalid_argument", "invalid_request_error", ["empty"]),
    ("temperature", dict(body={"model": "v2svc", "messages": HI, "temperature": 0}), 400, "invalid_argument",
     "invalid_request_error", ["temperature", "(0, 1.0]"]),
    ("wrong-type", dict(body={"model": "v2svc", "messages": HI, "stream": "yes"}), 400, "invalid_argument",
     "invalid_request_error", ["stream"]),
    ("n", dict(body={"model": "v2svc", "messages": HI, "n": 3}), 400, "invalid_argument", "invalid_request_error",
     ["`n`"]),
    ("functions", dict(body={"model": "v2svc", "messages": HI, "functions": [{"name": "f"}]}), 400,
     "invalid_argument", "invalid_request_error", ["`functions`"]),
    ("json-schema", dict(body={"model": "v2svc", "messages": HI,
                               "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
     400, "invalid_argument", "invalid_request_error", ["`response_format.json_schema.schema` is required"]),
    ("web-search", dict(body={"model": "v2svc", "messages": HI, "web_search": {"enable": True}}), 400,
     "invalid_argument", "invalid_request_error", ["`web_search`"]),
    ("image", dict(body={"model": "v2svc", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]}), 400, "invalid_argument",
     "invalid_request_error", ["`messages[0].content[0]`", "images"]),
    ("characters", dict(body={"model": "v2svc", "messages": [{"role": "user", "content": LONG}]}), 400,
     "characters_too_long", "invalid_request_error", ["the max input characters is 11200"]),
    ("tokens", dict(body={"model": "v2svc", "messages": [{"role": "user", "content": "7" * 11200}]}), 400,
     "tokens_too_long", "invalid_request_error", ["Prompt tokens too long"]),
    ("no-permission", dict(body={"model": "other", "messages": HI}, key="limited"), 403, "no_permission",
     "access_denied", ["other"]),
    ("get", dict(method="GET"), 405, "method_not_supported", "invalid_request_error", []),
    ("unknown-path", dict(path="/completions", body={"model": "v2svc", "prompt": "hi"}), 404, "invalid_url",
     "invalid_request_error", []),
    ("stream-refused-before-first-chunk", dict(body={"model": "v2svc", "messages": HI, "stream": True,
                                                    "top_p": 2}), 400, "invalid_argument",
     "invalid_request_error", ["top_p"]),
]


@pytest.mark.parametrize("kwargs,status,code,type_,words", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_error_paths(v2, kwargs, status, code, type_, words):
    if kwargs.get("key") == "limited":
        kwargs = {**kwargs, "key": v2.limited["v2_api_key"]}
    response = post(v2, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["error", "id"] and ID_RE.match(body["id"])
    assert list(body["error"]) == ["code", "message", "type"]
    assert (body["error"]["code"], body["error"]["type"]) == (code, type_)
    for word in words:
        assert word in body["error"]["message"], body
    assert requests.get(f"{v2.server.base_url}/healthz", timeout=10).status_code == 200
