"""The v2 wire without a server: the OpenAI body → neutral ChatRequest, the renderer over neutral
events, and the v1 → v2 error table. The same paths run over HTTP with real clients in tests/e2e."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from qfserve.protocol import v2
from qfserve.protocol.errors import Code, QianfanError
from qfserve.protocol.events import ChatEnd, TextDelta, TokenLogprob, Usage, Verdict
from qfserve.protocol.v2_errors import TWINS, V2Error, twin_of

HI = [{"role": "user", "content": "hi"}]


def parse(**body):
    return v2.parse_chat_request({"model": "svc", "messages": HI, **body})


def refusal(body) -> V2Error | QianfanError:
    with pytest.raises((V2Error, QianfanError)) as caught:
        v2.parse_chat_request(body)
    return caught.value


def as_v2(error) -> V2Error:
    return twin_of(error) if isinstance(error, QianfanError) else error


# ---- the request ---------------------------------------------------------------------------------

def test_openai_fields_map_to_the_neutral_request():
    parsed = v2.parse_chat_request({
        "model": "svc",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "system", "content": [{"type": "text", "text": "Be kind."}]},
                     {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                     {"role": "assistant", "content": "ok", "name": "bot"}, {"role": "user", "content": "c"}],
        "max_tokens": 50, "max_completion_tokens": 60, "stop": "END", "user": "u-1", "seed": 7,
        "temperature": 0.5, "top_p": 0, "frequency_penalty": 1, "presence_penalty": -1, "penalty_score": 1.5,
        "logprobs": True, "top_logprobs": 3, "stream": True, "stream_options": {"include_usage": True}, "n": 1,
        "metadata": {"trace": "x"}, "extra_parameters": {"use_keyword": True}, "frobnicate": 1, "system": "ignored",
    })
    chat = parsed.chat
    assert parsed.model == "svc" and parsed.include_usage is True
    assert chat.system == "Be brief.\n\nBe kind."
    assert [(m.role, m.content) for m in chat.messages] == [("user", "a\nb"), ("assistant", "ok"), ("user", "c")]
    assert chat.max_output_tokens == 60  # max_completion_tokens wins
    assert chat.stop == ("END",) and chat.user_id == "u-1" and chat.seed == 7
    assert (chat.temperature, chat.top_p, chat.frequency_penalty, chat.presence_penalty, chat.penalty_score) == \
        (0.5, 0.0, 1.0, -1.0, 1.5)
    assert chat.logprobs and chat.top_logprobs == 3 and chat.stream


def test_defaults_are_the_services_not_v2s():
    chat = parse().chat
    assert (chat.temperature, chat.top_p, chat.max_output_tokens, chat.seed, chat.system) == (0.95, 0.7, 1024, None, None)
    assert parse(max_tokens=9).chat.max_output_tokens == 9
    assert parse(user="a", user_id="b").chat.user_id == "b"
    assert parse(stream_options=None).include_usage is False


@pytest.mark.parametrize("body,status,code,words", [
    ({"messages": HI}, 400, "invalid_model", ["model is empty"]),
    ({"model": "", "messages": HI}, 400, "invalid_model", ["model is empty"]),
    ({"model": 5, "messages": HI}, 400, "invalid_argument", ["model"]),
    ({"model": "svc"}, 400, "invalid_messages", ["messages is required"]),
    ({"model": "svc", "messages": []}, 400, "invalid_messages", ["empty"]),
    ({"model": "svc", "messages": "hi"}, 400, "invalid_messages", ["array"]),
    ({"model": "svc", "messages": [{"role": "system", "content": "x"}]}, 400, "invalid_messages", ["user message"]),
    ({"model": "svc", "messages": [*HI, {"role": "assistant", "content": "a"}]}, 400, "invalid_messages", ["odd"]),
    ({"model": "svc", "messages": [*HI, *HI, *HI]}, 400, "invalid_messages", ["messages[1]", "assistant"]),
    ({"model": "svc", "messages": [*HI, {"role": "system", "content": "x"}, *HI]}, 400, "invalid_messages",
     ["messages[1]", "system"]),
    ({"model": "svc", "messages": [{"role": "bot", "content": "x"}]}, 400, "invalid_messages", ["'bot'"]),
    ({"model": "svc", "messages": [{"role": "user"}]}, 400, "invalid_messages", ["messages[0].content"]),
    ({"model": "svc", "messages": [{"role": "user", "content": 5}]}, 400, "invalid_messages", ["messages[0].content"]),
    ({"model": "svc", "messages": [{"role": "user", "content": [{"type": "audio"}]}]}, 400, "invalid_messages",
     ["messages[0].content[0]"]),
    ({"model": "svc", "messages": [{"role": "user", "content": "  \n"}]}, 400, "invalid_argument",
     ["messages[0].content", "empty"]),
    ({"model": "svc", "messages": HI, "n": 2}, 400, "invalid_argument", ["`n`", "1"]),
    ({"model": "svc", "messages": HI, "temperature": 0}, 400, "invalid_argument", ["temperature", "(0, 1.0]"]),
    ({"model": "svc", "messages": HI, "temperature": "0.5"}, 400, "invalid_argument", ["temperature"]),
    ({"model": "svc", "messages": HI, "top_p": 1.1}, 400, "invalid_argument", ["top_p", "[0, 1.0]"]),
    ({"model": "svc", "messages": HI, "max_tokens": 1}, 400, "invalid_argument", ["max_tokens", "[2, 2048]"]),
    ({"model": "svc", "messages": HI, "max_completion_tokens": 2049}, 400, "invalid_argument",
     ["max_completion_tokens", "[2, 2048]"]),
    ({"model": "svc", "messages": HI, "seed": -1}, 400, "invalid_argument", ["seed"]),
    ({"model": "svc", "messages": HI, "stop": ["a"] * 5}, 400, "invalid_argument", ["stop", "4"]),
    ({"model": "svc", "messages": HI, "top_logprobs": 2}, 400, "invalid_argument", ["logprobs"]),
    ({"model": "svc", "messages": HI, "stream_options": {"include_usage": "yes"}}, 400, "invalid_argument",
     ["include_usage"]),
    ({"model": "svc", "messages": HI, "metadata": {"k": 1}}, 400, "invalid_argument", ["metadata"]),
    ({"model": "svc", "messages": HI, "metadata": {str(i): "v" for i in range(17)}}, 400, "invalid_argument",
     ["metadata", "16"]),
    ({"model": "svc", "messages": HI, "extra_parameters": "x"}, 400, "invalid_argument", ["extra_parameters"]),
    ({"model": "svc", "messages": HI, "enable_user_memory": True}, 400, "invalid_argument", ["user_id"]),
])
def test_refusals_name_what_is_wrong(body, status, code, words):
    error = as_v2(refusal(body))
    assert (error.status, error.code) == (status, code), error
    for word in words:
        assert word in error.message, error.message


@pytest.mark.parametrize("body,field", [
    ({"functions": [{"name": "f"}]}, "`functions`"),
    ({"web_search": {"enable": True}}, "`web_search`"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "see"},
                                                {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
     "`messages[0].content[1]`"),
    ({"messages": [*HI, {"role": "assistant", "content": "a"}, {"role": "function", "name": "f", "content": "x"}]},
     "`messages[2].role`"),
])
def test_unbuilt_features_are_refused_by_name(body, field):
    error = as_v2(refusal({"model": "svc", "messages": HI, **body}))
    assert (error.status, error.code, error.type) == (400, "invalid_argument", "invalid_request_error")
    assert error.message.startswith(f"{field} is not supported"), error.message


def test_harmless_forms_of_those_fields_pass():
    parse(tools=[], functions=None, response_format={"type": "text"}, web_search={"enable": False},
          tool_choice="none", parallel_tool_calls=False)


# ---- the error table ---------------------------------------------------------------------------

def test_every_v1_code_has_a_v2_twin():
    assert set(TWINS) == set(Code)
    statuses = {twin.status for twin in TWINS.values()}
    assert statuses <= {400, 401, 403, 404, 405, 429, 500, 503}
    assert TWINS[Code.RATE_LIMIT_RPM].code == "rpm_rate_limit_exceeded"
    assert TWINS[Code.RATE_LIMIT_TPM].code == "tpm_rate_limit_exceeded"


def test_twin_keeps_details_and_says_when_to_retry():
    detailed = twin_of(QianfanError(Code.INPUT_CHARS_TOO_LONG, "the max input characters is 11200"))
    assert (detailed.status, detailed.code, detailed.message) == (400, "characters_too_long",
                                                                 "the max input characters is 11200")
    limited = twin_of(QianfanError(Code.RATE_LIMIT_RPM, retry_after=12.2))
    assert limited.headers() == {"Retry-After": "13"}
    assert twin_of(QianfanError(Code.RATE_LIMIT_TPM)).headers() == {"Retry-After": "1"}
    assert twin_of(QianfanError(Code.INVALID_JSON)).headers() == {}
    assert limited.body("as-0123456789") == {
        "error": {"code": "rpm_rate_limit_exceeded", "message": "Rate limit reached for RPM",
                  "type": "rate_limit_exceeded"}, "id": "as-0123456789"}


# ---- the answer ----------------------------------------------------------------------------------

async def _events(*events):
    for event in events:
        yield event


def _collect(iterator):
    async def run():
        return [item async for item in iterator]
    return asyncio.run(run())


LP = (TokenLogprob("Hi", -0.1, (("Hi", -0.1), ("Yo", -2.0))),)


def test_stream_is_one_chunk_per_delta_then_finish_then_usage():
    events = _events(TextDelta("Hi", Usage(5, 1), logprobs=LP), TextDelta("", Usage(5, 1)),
                     TextDelta(" there", Usage(5, 2)), ChatEnd("normal", Usage(5, 2)))
    chunks = [orjson.loads(v2.dump(c)) for c in _collect(v2.render_stream("as-x", "svc", 100, events, logprobs=True,
                                                                           include_usage=True))]
    assert [c["choices"][0]["delta"] for c in chunks[:3]] == [{"role": "assistant", "content": "Hi"},
                                                               {"content": " there"}, {}]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:3]] == [None, None, "stop"]
    assert chunks[0]["choices"][0]["logprobs"]["content"][0] == {
        "token": "Hi", "logprob": -0.1, "bytes": [72, 105],
        "top_logprobs": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105]},
                         {"token": "Yo", "logprob": -2.0, "bytes": [89, 111]}]}
    assert all(c["usage"] is None for c in chunks[:3])
    assert chunks[3]["choices"] == [] and chunks[3]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2,
                                                                "total_tokens": 7}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and {c["id"] for c in chunks} == {"as-x"}


def test_stream_without_include_usage_has_no_usage_field():
    chunks = _collect(v2.render_stream("as-x", "svc", 1, _events(TextDelta("a", Usage(1, 1)),
                                                                 ChatEnd("length", Usage(1, 1), truncated=True))))
    bodies = [orjson.loads(v2.dump(c)) for c in chunks]
    assert len(bodies) == 2 and all("usage" not in b for b in bodies)
    assert bodies[1]["choices"][0]["finish_reason"] == "length"


def test_blocked_input_streams_a_role_chunk_with_the_verdict():
    verdict = Verdict(input_level=3, input_ban_round=-1)
    chunks = _collect(v2.render_stream("as-x", "svc", 1, _events(ChatEnd("content_filter", Usage(4, 0), verdict))))
    [choice] = orjson.loads(v2.dump(chunks[0]))["choices"]
    assert choice == {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": "content_filter",
                      "flag": 3, "need_clear_history": True, "ban_round": -1, "logprobs": None}


def test_sync_answer_hides_content_and_logprobs_at_flag_3():
    verdict = Verdict(output_level=3)
    answer = asyncio.run(v2.render_completion("as-x", "svc", 1, _events(
        TextDelta("ok", Usage(3, 1), logprobs=LP), ChatEnd("content_filter", Usage(3, 1), verdict)), logprobs=True))
    body = orjson.loads(v2.dump(answer))
    assert body["choices"][0]["message"] == {"role": "assistant", "content": ""}
    assert body["choices"][0]["logprobs"] is None and body["choices"][0]["flag"] == 3
    assert body["choices"][0]["need_clear_history"] is False and "ban_round" not in body["choices"][0]
    shown = asyncio.run(v2.render_completion("as-x", "svc", 1, _events(
        TextDelta("ok", Usage(3, 1), logprobs=LP), ChatEnd("stop", Usage(3, 1))), logprobs=True))
    body = orjson.loads(v2.dump(shown))
    assert body["choices"][0]["message"]["content"] == "ok" and body["choices"][0]["finish_reason"] == "stop"
    assert len(body["choices"][0]["logprobs"]["content"]) == 1
    assert list(body) == ["id", "object", "created", "model", "choices", "usage"]


def test_a_code_outside_the_table_is_an_internal_error():
    error = twin_of(QianfanError(Code.INTERNAL.value, "boom"))
    assert (error.status, error.code, error.message) == (500, "internal_error", "boom")
    unknown = QianfanError(Code.UNKNOWN)
    unknown.code = 999  # a code no table knows must still become a v2 answer, never a crash
    assert twin_of(unknown).code == "internal_error"
