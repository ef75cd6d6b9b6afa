"""Validation of the chat body: each documented range, type and structure rule, with exact messages."""

import pytest

from qfserve.protocol.chat import parse_chat_request
from qfserve.protocol.errors import Code, QianfanError

ONE = [{"role": "user", "content": "hi"}]


def error_of(body) -> QianfanError:
    with pytest.raises(QianfanError) as caught:
        parse_chat_request(body)
    return caught.value


def test_defaults_are_the_seeds():
    request = parse_chat_request({"messages": ONE})
    assert (request.temperature, request.top_p, request.penalty_score) == (0.95, 0.7, 1.0)
    assert (request.max_output_tokens, request.frequency_penalty, request.presence_penalty) == (1024, 0.1, 0.0)
    assert request.stream is False and request.user_memory_level == 1


def test_null_is_absent_and_unknown_fields_are_ignored():
    request = parse_chat_request({"messages": ONE, "stop": None, "temperature": None, "extra_parameters": {"x": 1}})
    assert request.stop == () and request.temperature == 0.95


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_non_object_body_is_invalid_json(body):
    assert error_of(body).code == Code.INVALID_JSON


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("temperature", 0, "the range of temperature is (0, 1.0]"),
        ("temperature", 1.01, "the range of temperature is (0, 1.0]"),
        ("top_p", -0.1, "the range of top_p is [0, 1.0]"),
        ("top_p", 1.5, "the range of top_p is [0, 1.0]"),
        ("penalty_score", 0.9, "the range of penalty_score is [1.0, 2.0]"),
        ("penalty_score", 2.1, "the range of penalty_score is [1.0, 2.0]"),
        ("frequency_penalty", 2.5, "the range of frequency_penalty is [-2.0, 2.0]"),
        ("presence_penalty", -2.5, "the range of presence_penalty is [-2.0, 2.0]"),
        ("diversity_penalty", 101, "the range of diversity_penalty is [0, 100]"),
        ("max_output_tokens", 1, "the range of max_output_tokens is [2, 2048]"),
        ("max_output_tokens", 2049, "the range of max_output_tokens is [2, 2048]"),
        ("min_output_tokens", 1, "the range of min_output_tokens is [2, 2048]"),
        ("user_memory_level", 5, "the range of user_memory_level is [0, 4]"),
        ("user_memory_extract_level", 3, "the range of user_memory_extract_level is [0, 2]"),
        ("stop", ["a", "b", "c", "d", "e"], "the length of stop can not exceed 4"),
        ("stop", ["x" * 21], "the length of each stop element can not exceed 20 characters"),
    ],
)
def test_out_of_range_names_parameter_and_range(field, value, message):
    error = error_of({"messages": ONE, field: value})
    assert (error.code, error.message) == (Code.PARAM_OUT_OF_RANGE, message)


def test_boundaries_are_accepted():
    request = parse_chat_request({"messages": ONE, "temperature": 1.0, "top_p": 0, "penalty_score": 2.0,
                                  "max_output_tokens": 2, "min_output_tokens": 2, "stop": ["x" * 20] * 4})
    assert request.max_output_tokens == 2 and len(request.stop) == 4


@pytest.mark.parametrize("field, value", [("temperature", "0.5"), ("stream", "true"), ("stream", 1),
                                          ("max_output_tokens", 3.5), ("stop", "END"), ("system", 5),
                                          ("messages", "hi"), ("messages", [["user", "hi"]])])
def test_wrong_types_are_invalid_argument(field, value):
    assert error_of({"messages": ONE, field: value}).code == Code.INVALID_ARGUMENT


def test_missing_messages():
    assert error_of({}).code == Code.INVALID_ARGUMENT


def test_cross_field_rules():
    assert error_of({"messages": ONE, "min_output_tokens": 100, "max_output_tokens": 50}).code == Code.PARAM_OUT_OF_RANGE
    assert error_of({"messages": ONE, "top_logprobs": 3}).message == "top_logprobs requires logprobs to be true"
    error = error_of({"messages": ONE, "enable_user_memory": True})
    assert (error.code, error.message) == (Code.PARAM_OUT_OF_RANGE, "user_id is required when enable_user_memory is true")


def test_message_structure():
    user, bot = {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}
    assert error_of({"messages": []}).message == "messages can not be empty"
    assert error_of({"messages": [{"role": "user", "content": ""}]}).message == "message content can not be empty"
    assert error_of({"messages": [{"role": "user"}]}).code == Code.INVALID_ARGUMENT
    error = error_of({"messages": [user, bot]})
    assert (error.code, error.message) == (Code.MESSAGES_STRUCTURE, "the length of messages must be an odd number")
    error = error_of({"messages": [user, user, user]})
    assert error.message == "the role of message with odd index in the messages must be assistant"
    error = error_of({"messages": [bot, bot, user]})
    assert error.message == "the role of message with even index in the messages must be user or function"
    assert len(parse_chat_request({"messages": [user, bot, user]}).messages) == 3


def test_input_chars_counts_system_and_every_message():
    request = parse_chat_request({"messages": [{"role": "user", "content": "abc"}], "system": "12"})
    assert request.input_chars() == 5


def test_seed_is_an_integer_extension():
    assert parse_chat_request({"messages": ONE}).seed is None
    assert parse_chat_request({"messages": ONE, "seed": 42}).seed == 42
    assert parse_chat_request({"messages": ONE, "seed": -3}).seed == -3  # any integer
    assert parse_chat_request({"messages": ONE, "seed": None}).seed is None
    for wrong in ("42", 4.5, True, [1], {"v": 1}):
        assert error_of({"messages": ONE, "seed": wrong}).code == Code.INVALID_ARGUMENT
