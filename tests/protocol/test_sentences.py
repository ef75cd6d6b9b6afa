from qfserve.protocol.sentences import SentenceSplitter


def split(pieces, max_chars=80, first_chunk=False):
    splitter = SentenceSplitter(max_chars, first_chunk=first_chunk)
    chunks = [c for p in pieces for c in splitter.feed(p)]
    rest = splitter.flush()
    return chunks + ([rest] if rest else [])


def test_chinese_and_western_sentence_ends():
    assert split(["你好。今天", "天气很好！是吗？Yes. No! Why?"]) == ["你好。", "今天天气很好！", "是吗？", "Yes.", " No!", " Why?"]


def test_decimal_and_list_numbers_stay_whole():
    chunks = split(["Pi is 3.14 and e is 2.71. Then:\n1. first"])
    assert chunks == ["Pi is 3.14 and e is 2.71.", " Then:\n1. first"]


def test_long_run_without_punctuation_is_cut_at_a_clause_mark():
    text = "甲" * 50 + "，" + "乙" * 40
    chunks = split([text], max_chars=80)
    assert chunks[0] == "甲" * 50 + "，" and "".join(chunks) == text


def test_nothing_is_lost():
    text = "Hello there. 这是一个测试；还有更多！ok? 最后"
    for size in (1, 2, 3, 7):
        pieces = [text[i:i + size] for i in range(0, len(text), size)]
        assert "".join(split(pieces)) == text


def test_first_visible_text_goes_out_at_once():
    assert split(["\n", "以下", "为您推荐。", "好的"], first_chunk=True) == ["\n以下", "为您推荐。", "好的"]
