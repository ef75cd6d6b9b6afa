"""The chat body's memory fields, as parsed by qfserve/protocol/chat.py."""

import pytest

from qfserve.protocol.chat import parse_chat_request
from qfserve.protocol.errors import QianfanError

MESSAGES = [{"role": "user", "content": "我叫李雷"}]


def test_enable_user_memory_without_user_id_is_rejected_with_336003():
    for body in ({"messages": MESSAGES, "enable_user_memory": True},
                 {"messages": MESSAGES, "enable_user_memory": True, "user_id": ""}):
        with pytest.raises(QianfanError) as raised:
            parse_chat_request(body)
        assert raised.value.code == 336003


def test_memory_fields_and_their_defaults():
    request = parse_chat_request({"messages": MESSAGES, "enable_user_memory": True, "user_id": "u1",
                                  "user_memory_extract_level": 2, "user_setting": "喜欢简短回答"})
    assert (request.user_memory_extract_level, request.user_memory_level, request.user_setting) == (2, 1, "喜欢简短回答")
    for name, value in (("user_memory_level", 5), ("user_memory_extract_level", 3)):
        with pytest.raises(QianfanError) as raised:
            parse_chat_request({"messages": MESSAGES, "enable_user_memory": True, "user_id": "u1", name: value})
        assert raised.value.code == 336003
