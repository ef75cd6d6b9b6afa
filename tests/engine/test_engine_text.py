"""StreamingText: UTF-8 reassembly and stop-string holdback, without a model."""

from qfserve.engine.llamacpp.text import StreamingText


def test_partial_utf8_is_held_until_the_character_completes():
    text = StreamingText()
    encoded = "你好".encode()
    assert text.push(encoded[:2]) == ""
    assert text.push(encoded[2:4]) == "你"
    assert text.push(encoded[4:]) == "好"
    assert text.flush() == ""


def test_stop_string_prefix_is_held_and_the_stop_is_never_emitted():
    text = StreamingText(("END",))
    assert text.push(b"abc E") == "abc "
    assert text.push(b"N") == ""
    assert text.push(b"D and more") == ""
    assert text.stopped and text.matched_stop == "END"
    assert text.flush() == ""


def test_held_text_is_released_when_it_stops_matching():
    text = StreamingText(("END",))
    assert text.push(b"xE") == "x"
    assert text.push(b"Nd") == "ENd"
    assert not text.stopped


def test_held_text_is_released_at_the_end():
    text = StreamingText(("</answer>",))
    assert text.push(b"done </ans") == "done "
    assert text.flush() == "</ans"


def test_earliest_stop_wins():
    text = StreamingText(("world", "lo"))
    assert text.push(b"hello world") == "hel"
    assert text.matched_stop == "lo"


def test_stop_split_across_a_multibyte_character():
    text = StreamingText(("。",))
    encoded = "好。后".encode()
    assert text.push(encoded[:4]) == "好"
    assert text.push(encoded[4:]) == ""
    assert text.stopped


def test_an_unfinished_character_at_the_end_is_dropped_not_replaced():
    encoded = "北京".encode()
    for cut in range(len(encoded) + 1):
        text = StreamingText()
        shown = text.push(encoded[:cut]) + text.flush()
        assert "\ufffd" not in shown
        assert shown == encoded[:cut].decode("utf-8", "ignore")


def test_invalid_bytes_mid_answer_are_still_visible_as_replacement():
    text = StreamingText()
    assert text.push(b"a\xffb") == "a\ufffdb"


def test_token_texts_carry_the_characters_they_complete():
    text = StreamingText()
    encoded = "你好".encode()
    text.push(encoded[:2])
    assert text.last_decoded == ""
    assert text.text_if(encoded[2:3]) == "你"  # an alternative that would complete the character
    assert text.text_if(b"x") == "\ufffdx"  # one that would not: the stray bytes are visible
    text.push(encoded[2:4])
    assert text.last_decoded == "你"
    assert text.text_if(encoded[4:]) == "好"
