"""Pieces of the remote engine that need no server: reading vLLM's stream, choosing a replica."""

from __future__ import annotations

import orjson
import pytest

from qfserve.engine.base import FinishEvent, GenerateRequest, SamplingParams
from qfserve.engine.openai_compat.dialect import LLAMA_CPP, VLLM, completion_body, is_context_error
from qfserve.engine.openai_compat.engine import _Garbage, _StreamReader, _UpstreamError
from qfserve.engine.openai_compat.replicas import PoolSettings, ReplicaPool


def request(**params) -> GenerateRequest:
    return GenerateRequest("as-test", [1, 2, 3], SamplingParams(**params))


def data(obj) -> str:
    return "data: " + orjson.dumps(obj).decode()


def read(reader: _StreamReader, lines: list[str]):
    events = []
    for line in lines:
        got, done = reader.line(line)
        events += got
        if done:
            break
    return events, reader.finish()


def test_vllm_chunks_with_token_ids_usage_and_stop_reason():
    # The shape vLLM 0.32 streams for /v1/completions with return_token_ids and include_usage.
    lines = [
        data({"choices": [{"index": 0, "text": "Hel", "token_ids": [10], "finish_reason": None}]}), "",
        data({"choices": [{"index": 0, "text": "", "token_ids": [11], "finish_reason": None}]}),  # held back
        data({"choices": [{"index": 0, "text": "lo", "token_ids": [12], "finish_reason": "stop",
                           "stop_reason": "END"}]}),
        data({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}}),
        "data: [DONE]",
    ]
    events, finish = read(_StreamReader(request()), lines)
    assert [(e.token_id, e.text) for e in events] == [(10, "Hel"), (11, ""), (12, "lo")]
    assert finish == FinishEvent("stop", 3, 4, "", matched_stop="END")


def test_end_of_text_is_stop_without_a_matched_string_and_length_is_length():
    end = data({"choices": [{"text": "x", "token_ids": [5], "finish_reason": "stop", "stop_reason": None}]})
    assert read(_StreamReader(request()), [end, "data: [DONE]"])[1].matched_stop is None
    cut = data({"choices": [{"text": "x", "token_ids": [5], "finish_reason": "length"}]})
    assert read(_StreamReader(request()), [cut, "data: [DONE]"])[1].reason == "length"


def test_logprobs_give_one_event_per_token_with_sorted_alternatives():
    chunk = {"choices": [{"text": "ab", "token_ids": [1, 2], "finish_reason": None, "logprobs": {
        "tokens": ["a", "b"], "token_logprobs": [-0.1, -0.2],
        "top_logprobs": [{"a": -0.1, "c": -3.0, "d": -2.0}, {"b": -0.2, "e": -1.0}]}}]}
    events, _ = read(_StreamReader(request(logprobs=True, top_logprobs=2)), [data(chunk)])
    assert [e.text for e in events] == ["", "ab"]  # both tokens share the chunk's text span
    assert events[0].logprob == -0.1 and [t.token for t in events[0].top_logprobs] == ["a", "d"]
    assert events[1].token_text == "b" and [t.token for t in events[1].top_logprobs] == ["b", "e"]


def test_gateway_side_stop_for_servers_that_cannot_name_it():
    reader = _StreamReader(request(), stops=("STOP",))
    lines = [data({"choices": [{"text": t, "finish_reason": None}]}) for t in ("one ", "ST", "OP two")]
    events, finish = read(reader, lines)
    assert "".join(e.text for e in events) == "one "
    assert finish.reason == "stop" and finish.matched_stop == "STOP"


@pytest.mark.parametrize("line", ["data: {not json", "garbage line", "data: [1, 2]"])
def test_garbage_is_refused(line):
    with pytest.raises(_Garbage):
        _StreamReader(request()).line(line)


def test_error_chunk_and_cut_stream():
    with pytest.raises(_UpstreamError):
        _StreamReader(request()).line(data({"error": {"message": "boom", "code": 500}}))
    reader = _StreamReader(request())
    reader.line(data({"choices": [{"text": "x", "finish_reason": None}]}))
    assert reader.finish() is None  # no finish_reason: the stream was cut


def test_sse_comments_and_pings_are_ignored():
    assert _StreamReader(request()).line(": ping - 2026-01-01") == ([], False)
    assert _StreamReader(request()).line("event: message") == ([], False)


def test_bodies_per_dialect():
    req = GenerateRequest("as-x", [7, 8], SamplingParams(temperature=0.5, top_p=0.6, repeat_penalty=1.2,
                                                         max_tokens=9, min_tokens=2, stop=("s",),
                                                         logprobs=True, top_logprobs=3, seed=4))
    vllm = completion_body(VLLM, "m", req, None)
    assert vllm["prompt"] == [7, 8] and vllm["repetition_penalty"] == 1.2 and vllm["stop"] == ["s"]
    assert vllm["stream_options"] == {"include_usage": True} and vllm["logprobs"] == 3 and vllm["seed"] == 4
    assert vllm["top_k"] == 40 and vllm["min_p"] == 0.05 and vllm["min_tokens"] == 2 and vllm["max_tokens"] == 9
    llama = completion_body(LLAMA_CPP, "m", req, "TEXT")
    assert llama["prompt"] == "TEXT" and llama["repeat_penalty"] == 1.2 and "stop" not in llama
    # vLLM refuses top_p 0 (Qianfan allows it: the most likely token only).
    assert completion_body(VLLM, "m", GenerateRequest("a", [1], SamplingParams(top_p=0.0)), None)["top_p"] > 0


def test_context_errors_of_both_servers():
    vllm = {"error": {"message": "This model's maximum context length is 2048 tokens. However, you requested "
                                 "3000 tokens", "type": "BadRequestError", "code": 400}}
    llama = {"error": {"message": "This model's maximum context length is 1024 tokens...",
                       "code": "context_length_exceeded"}}
    assert is_context_error(400, vllm) and is_context_error(400, llama)
    assert not is_context_error(400, {"error": {"message": "temperature must be positive"}})


def test_least_outstanding_then_rotation():
    pool = ReplicaPool("t", ["http://a", "http://b", "http://c"], settings=PoolSettings())
    a, b, c = pool.replicas
    a.in_flight, b.in_flight, c.in_flight = 2, 0, 1
    assert pool.pick() is b
    b.in_flight = 2
    assert pool.pick() is c
    c.in_flight = 2
    assert {pool.pick() for _ in range(6)} == {a, b, c}  # ties rotate
    assert pool.pick(exclude=[a, b]) is c


def test_failure_ejects_and_cooldown_doubles():
    now = [100.0]
    pool = ReplicaPool("t", ["http://a", "http://b"], settings=PoolSettings(cooldown=2), clock=lambda: now[0])
    a, b = pool.replicas
    pool.failed(a, "connect", "refused")
    assert not a.admitted and a.ejected_until == 102.0 and pool.pick() is b
    pool.failed(a, "probe", "refused")
    assert a.ejected_until == 104.0
    pool.failed(b, "garbage", "x")
    assert pool.pick() is None  # no replica: the engine answers 2 at once


def test_chat_stream_gathers_a_call_whether_its_name_comes_once_or_in_every_delta():
    from qfserve.engine.base import FunctionDef, Tools
    from qfserve.engine.openai_compat.tools import ChatStreamReader

    tools = Tools((FunctionDef("f", "d", '{"type": "object", "properties": {"a": {"type": "integer"}}}'),), "function", "f")
    request = GenerateRequest("as-test", [1, 2, 3], SamplingParams(), tools=tools)
    for repeated in (False, True):  # vLLM names the call once; llama-cpp-python in every delta
        reader = ChatStreamReader(request)
        for piece in ('{"a"', ': 1}'):
            function = {"arguments": piece, **({"name": "f"} if repeated or piece == '{"a"' else {})}
            reader.chunk({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": function}]},
                                       "finish_reason": None}]})
        reader.chunk({"choices": [{"delta": {}, "finish_reason": "tool_calls"}]})
        finish = reader.finish()
        assert finish.reason == "stop" and finish.call.name == "f" and finish.call.arguments == '{"a": 1}'
        assert finish.completion_tokens == 2  # no usage from the server: one per piece


def test_a_forced_call_asked_as_json_and_cut_short_is_text_not_a_call():
    from qfserve.engine.base import FunctionDef, Tools
    from qfserve.engine.openai_compat.tools import ChatStreamReader

    tools = Tools((FunctionDef("f", "d", '{"type": "object", "properties": {"a": {"type": "integer"}}}'),), "function", "f")
    request = GenerateRequest("as-test", [1, 2, 3], SamplingParams(), tools=tools)
    for end, whole in (("stop", True), ("length", False)):
        reader = ChatStreamReader(request, call_from_content="f")
        reader.chunk({"choices": [{"delta": {"content": '{"a": 1'}, "finish_reason": None}]})
        if whole:
            reader.chunk({"choices": [{"delta": {"content": "}"}, "finish_reason": None}]})
        reader.chunk({"choices": [{"delta": {}, "finish_reason": end}]})
        finish = reader.finish()
        if whole:
            assert finish.call.name == "f" and finish.call.arguments == '{"a": 1}' and finish.text == ""
        else:
            assert finish.reason == "length" and finish.call is None and finish.text == '{"a": 1'


def test_v1_turns_get_call_ids_and_results_answer_them_by_name():
    from qfserve.engine.openai_compat.tools import openai_turns

    turns = openai_turns([
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": "{}", "thoughts": ""}]},
        {"role": "function", "name": "f", "content": "r"},
    ], "sys")
    assert turns[0] == {"role": "system", "content": "sys"}
    call_id = turns[2]["tool_calls"][0]["id"]
    assert turns[3] == {"role": "tool", "tool_call_id": call_id, "content": "r"}
