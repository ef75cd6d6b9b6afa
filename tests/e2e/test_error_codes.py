"""Every error code the server can answer, over the wire, with its exact message (qianfan-wire.md §3).

Business errors are HTTP 200 with one line of compact JSON `{"error_code","error_msg","id"}`; the
token endpoint answers OAuth-shaped bodies. After each error the server must keep serving.
Nearly every case here is refused before the model runs; the few that reach the model ask for 2 tokens.
"""

from __future__ import annotations

import json
import random
import re

import pytest
import requests

from qfserve.store import apps as app_store
from qfserve.store import tokens as token_store
from qfserve.store.db import Store

ID_RE = re.compile(r"^as-[a-z0-9]{10}$")
SHORT = {"max_output_tokens": 2}
HELLO = [{"role": "user", "content": "hi"}]

MSG_ODD_LENGTH = "the length of messages must be an odd number"
MSG_ODD_ROLE = "the role of message with odd index in the messages must be assistant"
MSG_EVEN_ROLE = "the role of message with even index in the messages must be user or function"


# ---- helpers ------------------------------------------------------------------------------------

def assert_error(response: requests.Response, code: int, message: str | None = None) -> dict:
    """HTTP 200, one line of compact JSON with exactly error_code, error_msg and an `as-` id."""
    assert response.status_code == 200, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    raw = response.content
    assert b"\n" not in raw, raw
    body = json.loads(raw)
    assert raw == json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode(), "not compact JSON"
    assert list(body) == ["error_code", "error_msg", "id"], body
    assert ID_RE.match(body["id"]), body
    assert body["error_code"] == code, body
    if message is not None:
        assert body["error_msg"] == message, body
    return body


def assert_serving(server) -> None:
    assert requests.get(f"{server.base_url}/healthz", timeout=10).status_code == 200


def post_chat(server, token: str | None, body=None, *, api_path: str | None = None, raw: bytes | None = None,
              headers: dict | None = None, timeout: float = 120) -> requests.Response:
    url = server.chat_url(api_path)
    params = {"access_token": token} if token is not None else None
    data = raw if raw is not None else json.dumps(body, ensure_ascii=False).encode()
    return requests.post(url, params=params, data=data,
                         headers={"Content-Type": "application/json", **(headers or {})}, timeout=timeout)


def chat_error(server, token, body, code, message=None, **kwargs) -> dict:
    found = assert_error(post_chat(server, token, body, **kwargs), code, message)
    assert_serving(server)
    return found


def token_request(server, method: str = "POST", **params) -> requests.Response:
    return requests.request(method, f"{server.base_url}/oauth/2.0/token", params=params, json={}, timeout=30)


@pytest.fixture(scope="module")
def store(server):
    handle = Store(server.data_dir)
    yield handle
    handle.close()


# ---- authentication: 100, 110, 111 --------------------------------------------------------------

def test_100_no_access_token(server):
    chat_error(server, None, {"messages": HELLO, **SHORT}, 100, "Invalid parameter")


def test_100_empty_access_token(server):
    chat_error(server, "", {"messages": HELLO, **SHORT}, 100, "Invalid parameter")


def test_110_unknown_token(server):
    fake = "24.0123456789abcdef0123456789abcdef.2592000.1999999999.282335-1"
    chat_error(server, fake, {"messages": HELLO, **SHORT}, 110, "Access token invalid or no longer valid")


def test_111_expired_token(server, store):
    app = app_store.get_app(store, "tester")
    expired, _, expires_at = token_store.issue_token(store, app, ttl=-10)
    chat_error(server, expired, {"messages": HELLO, **SHORT}, 111, "Access token expired")


# ---- routing and method: 336005, 336101, 3 ------------------------------------------------------

def test_336005_unknown_api_path(server, token):
    chat_error(server, token, {"messages": HELLO, **SHORT}, 336005, "API name not exist", api_path="nosuchsvc")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_336101_not_post(server, token, method):
    response = requests.request(method, server.chat_url(), params={"access_token": token}, timeout=30)
    assert_error(response, 336101, "Invalid HTTP Method")
    assert_serving(server)


@pytest.mark.parametrize("method,path", [
    ("GET", "/"),
    ("POST", "/rpc/2.0/ai_custom/v1/wenxinworkshop/completions/svc"),
    ("POST", "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/svc/extra"),
    ("GET", "/no/such/route"),
])
def test_3_unknown_route(server, token, method, path):
    response = requests.request(method, server.base_url + path, params={"access_token": token},
                                json={"messages": HELLO}, timeout=30)
    assert_error(response, 3, "Unsupported openapi method")
    assert_serving(server)


# ---- body: 336002, 336001 -----------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"not json", b"{\"messages\": [", b"[]", b'[{"role":"user","content":"hi"}]',
                                 b'"text"', b"42", b"null"], ids=["text", "truncated", "empty-array", "array",
                                                                  "string", "number", "null"])
def test_336002_not_a_json_object(server, token, raw):
    assert_error(post_chat(server, token, raw=raw), 336002, "Invalid JSON")
    assert_serving(server)


@pytest.mark.parametrize("body", [
    {},
    {"stream": False, **SHORT},
    {"messages": "hi", **SHORT},
    {"messages": {"role": "user", "content": "hi"}, **SHORT},
    {"messages": ["hi"], **SHORT},
    {"messages": [{"content": "hi"}], **SHORT},
    {"messages": [{"role": "user", "content": 5}], **SHORT},
    {"messages": [{"role": 1, "content": "hi"}], **SHORT},
    {"messages": HELLO, "temperature": "0.5", **SHORT},
    {"messages": HELLO, "top_p": True, **SHORT},
    {"messages": HELLO, "stream": "yes", **SHORT},
    {"messages": HELLO, "max_output_tokens": "16"},
    {"messages": HELLO, "max_output_tokens": 16.5},
    {"messages": HELLO, "stop": "end", **SHORT},
    {"messages": HELLO, "stop": [1, 2], **SHORT},
    {"messages": HELLO, "system": 7, **SHORT},
    {"messages": HELLO, "user_id": ["u"], **SHORT},
    {"messages": HELLO, "enable_user_memory": "true", **SHORT},
], ids=lambda b: ",".join(f"{k}={v!r}"[:30] for k, v in b.items() if k != "max_output_tokens") or "empty")
def test_336001_missing_or_wrong_type(server, token, body):
    found = chat_error(server, token, body, 336001)
    assert found["error_msg"].startswith("Invalid Argument"), found


def test_336001_message_is_exactly_the_tables(server, token):
    # qianfan-wire.md §3 gives 336001 the fixed message `Invalid Argument` (no detail suffix).
    chat_error(server, token, {"max_output_tokens": 2}, 336001, "Invalid Argument")
    chat_error(server, token, {"messages": "hi", "max_output_tokens": 2}, 336001, "Invalid Argument")


# ---- parameter ranges: 336003 -------------------------------------------------------------------

RANGE_CASES = [
    ("temperature", 0, ["temperature", "(0, 1.0]"]),
    ("temperature", 1.5, ["temperature", "(0, 1.0]"]),
    ("temperature", -0.5, ["temperature", "(0, 1.0]"]),
    ("top_p", -0.1, ["top_p", "[0, 1.0]"]),
    ("top_p", 1.01, ["top_p", "[0, 1.0]"]),
    ("penalty_score", 0.99, ["penalty_score", "[1.0, 2.0]"]),
    ("penalty_score", 2.01, ["penalty_score", "[1.0, 2.0]"]),
    ("max_output_tokens", 1, ["max_output_tokens", "[2, 2048]"]),
    ("max_output_tokens", 2049, ["max_output_tokens", "[2, 2048]"]),
    ("min_output_tokens", 1, ["min_output_tokens", "[2, 2048]"]),
    ("min_output_tokens", 2049, ["min_output_tokens", "[2, 2048]"]),
    ("frequency_penalty", -2.01, ["frequency_penalty", "[-2.0, 2.0]"]),
    ("frequency_penalty", 2.5, ["frequency_penalty", "[-2.0, 2.0]"]),
    ("presence_penalty", -3, ["presence_penalty", "[-2.0, 2.0]"]),
    ("presence_penalty", 2.01, ["presence_penalty", "[-2.0, 2.0]"]),
    ("user_memory_level", -1, ["user_memory_level", "[0, 4]"]),
    ("user_memory_level", 5, ["user_memory_level", "[0, 4]"]),
    ("stop", ["a", "b", "c", "d", "e"], ["stop", "4"]),
    ("stop", ["x" * 21], ["stop", "20"]),
]


@pytest.mark.parametrize("name,value,words", RANGE_CASES, ids=[f"{n}={v!r}"[:40] for n, v, _ in RANGE_CASES])
def test_336003_out_of_range(server, token, name, value, words):
    body = {"messages": HELLO, "max_output_tokens": 2, name: value}
    found = chat_error(server, token, body, 336003)
    for word in words:
        assert word in found["error_msg"], found


def test_336003_user_memory_without_user_id(server, token):
    found = chat_error(server, token, {"messages": HELLO, "enable_user_memory": True, **SHORT}, 336003)
    assert "user_id" in found["error_msg"]


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": ""}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}, {"role": "user", "content": "ok"}],
])
def test_336003_empty_content(server, token, messages):
    chat_error(server, token, {"messages": messages, **SHORT}, 336003, "message content can not be empty")


@pytest.mark.parametrize("messages", [
    [{"role": "user"}],
    [{"role": "user", "content": None}],
    [{"role": "user", "content": "hi"}, {"role": "assistant"}, {"role": "user", "content": "ok"}],
])
def test_336001_missing_content(server, token, messages):
    # A required field missing is the table's 336001, as for a missing `messages` (empty is 336003).
    chat_error(server, token, {"messages": messages, **SHORT}, 336001, "Invalid Argument")


def test_stream_error_before_first_chunk_is_a_json_body(server, token):
    response = post_chat(server, token, {"messages": HELLO, "stream": True, "temperature": 0, **SHORT})
    assert_error(response, 336003)


def test_boundary_values_are_accepted(server, token):
    body = {"messages": HELLO, "temperature": 1.0, "top_p": 0, "penalty_score": 2.0, "frequency_penalty": -2.0,
            "presence_penalty": 2.0, "user_memory_level": 4, "stop": ["s" * 20, "b", "c", "d"],
            "min_output_tokens": 2, "max_output_tokens": 2}
    response = post_chat(server, token, body)
    assert response.status_code == 200
    answer = response.json()
    assert "error_code" not in answer, answer
    assert answer["usage"]["completion_tokens"] <= 2


# ---- messages structure: 336006 -----------------------------------------------------------------

U = {"role": "user", "content": "hi"}
A = {"role": "assistant", "content": "hello"}


@pytest.mark.parametrize("messages,message", [
    ([U, A], MSG_ODD_LENGTH),
    ([U, A, U, A], MSG_ODD_LENGTH),
    ([U, U, U], MSG_ODD_ROLE),
    ([U, {"role": "system", "content": "x"}, U], MSG_ODD_ROLE),
    ([A], MSG_EVEN_ROLE),
    ([{"role": "system", "content": "x"}], MSG_EVEN_ROLE),
    ([U, A, A], MSG_EVEN_ROLE),
    ([U, A, {"role": "bot", "content": "x"}], MSG_EVEN_ROLE),
], ids=["two", "four", "user-at-1", "system-at-1", "assistant-at-0", "system-at-0", "assistant-at-2", "bot-at-2"])
def test_336006_messages_structure(server, token, messages, message):
    chat_error(server, token, {"messages": messages, **SHORT}, 336006, message)


# ---- input limits: 336007, 336103 ---------------------------------------------------------------

def test_336007_input_chars_speed_8k(server, token):
    # svc is published with ERNIE-Speed-8K: 11200 characters of system + all message contents.
    chat_error(server, token, {"messages": [{"role": "user", "content": "a" * 11201}], **SHORT},
               336007, "the max input characters is 11200")
    chat_error(server, token, {"system": "s" * 11000, "messages": [{"role": "user", "content": "a" * 201}], **SHORT},
               336007, "the max input characters is 11200")
    messages = [{"role": "user", "content": "u" * 3734}, {"role": "assistant", "content": "a" * 3734},
                {"role": "user", "content": "u" * 3733}]  # 11201 over three turns
    chat_error(server, token, {"messages": messages, **SHORT}, 336007, "the max input characters is 11200")


def test_336007_input_chars_other_profile(server, token):
    server.cli("service", "publish", "tiny8k", "--model", "default", "--profile", "ERNIE-Tiny-8K",
               "--rpm", "100000", "--tpm", "100000000")
    chat_error(server, token, {"messages": [{"role": "user", "content": "a" * 24001}], **SHORT},
               336007, "the max input characters is 24000", api_path="tiny8k")


def test_336103_prompt_tokens_over_limit_under_char_limit(server, token):
    from qfserve.engine.prompt import ChatPrompt, default_model_path

    text = "7" * 11200  # exactly at the Speed-8K character limit, so 336007 does not apply
    prompt = ChatPrompt(default_model_path())
    n_tokens = len(prompt.tokenize(prompt.render([{"role": "user", "content": text}], None)))
    assert n_tokens > 7168, n_tokens
    chat_error(server, token, {"messages": [{"role": "user", "content": text}], **SHORT},
               336103, "Prompt tokens too long")


# ---- permission: 6 ------------------------------------------------------------------------------

def test_6_no_permission(server):
    creds = json.loads(server.cli("app", "create", "limited_app", "--json").stdout)
    server.cli("service", "publish", "perm_other", "--model", "default", "--rpm", "100000", "--tpm", "100000000")
    server.cli("app", "grant", "limited_app", "svc")
    limited = server.token(creds)
    chat_error(server, limited, {"messages": HELLO, **SHORT}, 6, "No permission to access data", api_path="perm_other")
    # On its granted service it passes the permission check (and gets to body validation).
    chat_error(server, limited, {"messages": [U, A], **SHORT}, 336006, MSG_ODD_LENGTH)
    # An unknown service is still 336005, whatever the grants.
    chat_error(server, limited, {"messages": HELLO, **SHORT}, 336005, "API name not exist", api_path="nosuchsvc")


# ---- token endpoint (OAuth-shaped, HTTP 401) ----------------------------------------------------

def assert_oauth(response: requests.Response, expected: bytes) -> None:
    assert response.status_code == 401, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    assert response.content == expected, response.content


def test_token_unknown_client_id(server):
    response = token_request(server, grant_type="client_credentials", client_id="nosuchkey",
                             client_secret=server.creds["secret_key"])
    assert_oauth(response, b'{"error_description":"unknown client id","error":"invalid_client"}')


def test_token_wrong_secret(server):
    response = token_request(server, grant_type="client_credentials", client_id=server.creds["api_key"],
                             client_secret="0" * 32)
    # Baidu sends this one with "error" first (qianfan-wire.md §2).
    assert_oauth(response, b'{"error":"invalid_client","error_description":"Client authentication failed"}')


@pytest.mark.parametrize("drop", ["grant_type", "client_id", "client_secret", "all"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_token_missing_parameter(server, drop, method):
    params = {"grant_type": "client_credentials", "client_id": server.creds["api_key"],
              "client_secret": server.creds["secret_key"]}
    params = {} if drop == "all" else {k: v for k, v in params.items() if k != drop}
    response = token_request(server, method, **params)
    assert_oauth(response, b'{"error_description":"The request is missing a required parameter",'
                           b'"error":"invalid_request"}')


def test_token_form_body_and_get(server):
    creds = {"grant_type": "client_credentials", "client_id": server.creds["api_key"],
             "client_secret": server.creds["secret_key"]}
    by_form = requests.post(f"{server.base_url}/oauth/2.0/token", data=creds, timeout=30)
    assert by_form.status_code == 200 and by_form.json()["access_token"].startswith("24.")
    by_get = requests.get(f"{server.base_url}/oauth/2.0/token", params=creds, timeout=30)
    assert by_get.status_code == 200 and by_get.json()["access_token"].startswith("24.")


# ---- tolerance: nulls, unknown fields, Accept -----------------------------------------------------

def _answer(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    body = response.json()
    assert "error_code" not in body, body
    assert ID_RE.match(body["id"])
    return body


def test_null_fields_are_absent(server, token):
    body = {"messages": HELLO, "stop": None, "temperature": None, "top_p": None, "system": None,
            "penalty_score": None, "user_id": None, "stream": None, "min_output_tokens": None, **SHORT}
    answer = _answer(post_chat(server, token, body))
    assert answer["usage"]["completion_tokens"] <= 2


def test_unknown_fields_are_ignored(server, token):
    body = {"messages": HELLO, "extra_parameters": {"request_source": "qianfan_py_sdk_v0.4.12.3"},
            "model": "ERNIE-Speed-8K", "frobnicate": [1, {"x": None}], "request_id": "abc", **SHORT}
    _answer(post_chat(server, token, body))


def test_stream_true_with_accept_json_still_streams(server, token):
    response = post_chat(server, token, {"messages": HELLO, "stream": True, **SHORT},
                         headers={"Accept": "application/json"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream;charset=utf-8"
    events = response.content.decode().split("\n\n")
    assert events[-1] == ""
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert all(e.startswith("data: {") for e in events[:-1])
    assert chunks[-1]["is_end"] is True
    assert [c["sentence_id"] for c in chunks] == list(range(len(chunks)))


# ---- fuzz ---------------------------------------------------------------------------------------

_BAD_VALUES = {
    "messages": [None, 0, "x", {}, [], [None], [1, 2], [{"role": "user"}], [{"role": "user", "content": ""}],
                 [{"role": "assistant", "content": "x"}], [{"role": "user", "content": "x"}] * 2,
                 [{"role": "user", "content": ["x"]}], [{"role": None, "content": "x"}]],
    "temperature": [0, -1, 2, "x", [], {}, True, 1e308],
    "top_p": [-1, 1.5, "x", "0.5", [0.5]],
    "penalty_score": [0, 3, "1", False],
    "max_output_tokens": [0, 1, 2049, -5, "8", 3.5, [], 10**30],
    "min_output_tokens": [0, 4096, "x"],
    "stop": ["x", [1], ["a"] * 5, ["y" * 21], {"a": 1}],
    "stream": ["true", 1, [], {}],
    "system": [1, [], {}],
    "frequency_penalty": [3, -3, "x"],
    "presence_penalty": [3, -3, []],
    "user_memory_level": [9, -1, "x", 1.5],
}


def _fuzz_body(rng: random.Random) -> bytes:
    valid = {"messages": [{"role": "user", "content": "hi"}], "max_output_tokens": 2}
    kind = rng.randrange(6)
    if kind == 0:  # random bytes
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 120)))
    if kind == 1:  # a strict prefix of a valid object is never JSON
        text = json.dumps({**valid, "temperature": 0.5}).encode()
        return text[: rng.randrange(0, len(text) - 1)]
    if kind == 2:  # one field with a value it can never take
        field = rng.choice(sorted(_BAD_VALUES))
        body = dict(valid)
        body[field] = rng.choice(_BAD_VALUES[field])
        return json.dumps(body).encode()
    if kind == 3:  # deep nesting
        depth = rng.choice([100, 2000, 20000])
        return b'{"messages":' + b"[" * depth + b"]" * depth + b"}"
    if kind == 4:  # invalid UTF-8 or NaN inside otherwise plausible JSON
        return rng.choice([b'{"messages":[{"role":"user","content":"\xff\xfe"}],"max_output_tokens":2}',
                           b'{"messages":[{"role":"user","content":"hi"}],"temperature":NaN}',
                           b'{"messages":[{"role":"user","content":"hi"}],"max_output_tokens":2,}',
                           b'\xef\xbb\xbf{"messages":[]}'])
    # a JSON value that is not an object
    return json.dumps(rng.choice([[valid], "messages", 3.14, True, None, [[], {}]])).encode()


def test_fuzz_malformed_bodies_never_5xx(server, token):
    rng = random.Random(20240228)
    content_types = ["application/json", "application/x-www-form-urlencoded", "text/plain", "", "multipart/form-data"]
    for _ in range(30):
        raw = _fuzz_body(rng)
        response = requests.post(server.chat_url(), params={"access_token": token}, data=raw,
                                 headers={"Content-Type": rng.choice(content_types)}, timeout=60)
        assert response.status_code < 500, (raw[:200], response.status_code, response.text)
        assert response.status_code == 200, (raw[:200], response.status_code, response.text)
        body = json.loads(response.content)
        assert body.get("error_code") in (336001, 336002, 336003, 336006), (raw[:200], body)
        assert ID_RE.match(body["id"])
    answer = _answer(post_chat(server, token, {"messages": HELLO, **SHORT}))
    assert answer["usage"]["completion_tokens"] <= 2
