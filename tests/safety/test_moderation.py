"""Moderation layer: lexicon loading, normalisation, input verdicts, streaming output filter."""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from qfserve.safety import (
    SAFE,
    LexiconError,
    Moderator,
    Verdict,
    install_sighup_reload,
    normalise,
    parse_category_levels,
)
from qfserve.safety.normalize import Positions, table

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "safety"

LEXICON = """\
# synthetic test lexicon
违禁词甲\tdemo_ban\t3
色情\tsexual\t2
广告词乙\tads\t1
foobar\tdemo_latin\t2
badword\tdemo_latin\t1
abc123\tdemo_digits\t3
"""
ALLOW = "白色情人节\n"


@pytest.fixture
def files(tmp_path):
    lex = tmp_path / "lexicon.tsv"
    lex.write_text(LEXICON, encoding="utf-8")
    allow = tmp_path / "allow.txt"
    allow.write_text(ALLOW, encoding="utf-8")
    return lex, allow


@pytest.fixture
def mod(files):
    lex, allow = files
    return Moderator.from_files([str(lex)], str(allow))


def user(text):
    return [("user", text)]


def stream(f, pieces):
    """Feed pieces; return (concatenated released text, stop verdict or None, final verdict)."""
    out = []
    for p in pieces:
        s, v = f.feed(p)
        out.append(s)
        if v is not None:
            return "".join(out), v, v
    s, v = f.finish()
    out.append(s)
    return "".join(out), None, v


def split_random(text, rng, max_piece=5):
    pieces, i = [], 0
    while i < len(text):
        n = rng.randint(1, max_piece)
        pieces.append(text[i:i + n])
        i += n
    return pieces


# ---------------------------------------------------------------- levels and rounds

def test_levels(mod):
    assert mod.check_input(user("今天天气很好"), None, None) == SAFE
    v1 = mod.check_input(user("这里有广告词乙"), None, None)
    assert (v1.level, v1.category, v1.ban_round, v1.need_clear_history) == (1, "ads", None, False)
    v2 = mod.check_input(user("色情内容"), None, None)
    assert (v2.level, v2.category, v2.ban_round, v2.need_clear_history) == (2, "sexual", -1, True)
    v3 = mod.check_input(user("说违禁词甲"), None, None)
    assert (v3.level, v3.category, v3.ban_round, v3.need_clear_history) == (3, "demo_ban", -1, True)


def test_max_level_wins(mod):
    v = mod.check_input(user("广告词乙 和 违禁词甲 和 色情"), None, None)
    assert v.level == 3 and v.category == "demo_ban"


def test_ban_round_current_and_earlier(mod):
    msgs = [("user", "你好"), ("assistant", "你好！"), ("user", "色情"), ("assistant", "不行"), ("user", "再见")]
    assert mod.check_input(msgs, None, None) == Verdict(2, "sexual", 2)
    msgs = [("user", "色情"), ("assistant", "不行"), ("user", "再见")]
    assert mod.check_input(msgs, None, None).ban_round == 1
    msgs = [("user", "你好"), ("assistant", "你好！"), ("user", "色情")]
    assert mod.check_input(msgs, None, None).ban_round == -1


def test_ban_round_prefers_highest_level_then_current(mod):
    msgs = [("user", "违禁词甲"), ("assistant", "…"), ("user", "色情")]
    assert mod.check_input(msgs, None, None) == Verdict(3, "demo_ban", 1)
    msgs = [("user", "色情"), ("assistant", "…"), ("user", "色情")]
    assert mod.check_input(msgs, None, None).ban_round == -1


def test_system_and_user_setting_count_as_current(mod):
    msgs = [("user", "a"), ("assistant", "b"), ("user", "c")]
    assert mod.check_input(msgs, "你是色情机器人", None) == Verdict(2, "sexual", -1)
    assert mod.check_input(msgs, None, "画像：违禁词甲") == Verdict(3, "demo_ban", -1)


def test_function_messages_count_as_user_rounds(mod):
    msgs = [("user", "a"), ("assistant", "b"), ("function", "色情"), ("assistant", "c"), ("user", "d")]
    assert mod.check_input(msgs, None, None) == Verdict(2, "sexual", 2)
    msgs = [("user", "a"), ("assistant", "b"), ("function", "违禁词甲")]
    assert mod.check_input(msgs, None, None) == Verdict(3, "demo_ban", -1)


def test_assistant_turns_not_checked(mod):
    msgs = [("user", "a"), ("assistant", "违禁词甲"), ("user", "c")]
    assert mod.check_input(msgs, None, None) == SAFE


# ---------------------------------------------------------------- normalisation / evasions

@pytest.mark.parametrize("text", [
    "ＦＯＯＢＡＲ",                     # full-width Latin
    "ⓕⓞⓞⓑⓐⓡ",                        # circled letters
    "FooBar",                         # case
    "f.o-o_b/a*r",                    # inserted punctuation
    "f o o b a r",                    # inserted spaces (incl. below)
    "f\u3000o\u00a0o\tb\na r",        # ideographic / no-break space, tab, newline
    "f\u200bo\u200co\u200db\u2060a\ufeffr",  # zero-width characters
    "f\u0301oobar",                   # inserted combining mark
])
def test_latin_evasions(mod, text):
    assert mod.check_input(user(f"x {text} y"), None, None).level == 2


@pytest.mark.parametrize("text", [
    "違禁詞甲",                        # traditional
    "违，禁。词！甲",                   # full-width punctuation
    "违 禁 词 甲",                      # spaces
    "违\u200b禁\u200b词\u200b甲",       # zero-width space
    "违★禁♥词☆甲",                     # symbols
    "违禁词\uff03甲",                   # full-width symbol
])
def test_cjk_evasions(mod, text):
    assert mod.check_input(user(text), None, None).level == 3


def test_circled_digits(mod):
    assert mod.check_input(user("ABC①②③"), None, None).level == 3
    assert mod.check_input(user("ａｂｃ１２３"), None, None).level == 3


def test_normalise_function():
    assert normalise("ＡＢＣ①Ⓐ") == "abc1a"
    assert normalise("違禁詞") == "违禁词"
    assert normalise("a\u200b b.c\uff01") == "abc"
    assert normalise("Straße") == "strasse"
    assert normalise("café", "strict") == "cafe" and normalise("f00b4r", "strict") == "foobar"


def test_positions_map_back_to_original():
    text = "Ａ,\u200b①㎏ x"
    tbl = table("default")
    norm = text.translate(tbl)
    assert norm == "a1kgx"
    pos = Positions(text, tbl)
    assert [pos.orig(j) for j in range(len(norm))] == [0, 3, 4, 4, 6]
    assert pos.orig(len(norm)) == len(text)
    long = ("，" * 70 + "字") * 30
    pos = Positions(long, tbl)
    assert all(long[pos.orig(j)] == "字" for j in range(30))


def test_word_boundaries_default_only(mod):
    assert mod.check_input(user("xfoobarx"), None, None) == SAFE
    assert mod.check_input(user("foobars"), None, None) == SAFE
    assert mod.check_input(user("(foobar)"), None, None).level == 2
    assert mod.check_input(user("是foobar吗"), None, None).level == 2
    assert mod.check_input(user("xfoobarx"), None, None, policy="strict").level == 2
    # ordinary words that concatenate into a term are not a hit; letter-spacing is
    assert mod.check_input(user("the foo bar test"), None, None) == SAFE
    assert mod.check_input(user("the f o o b a r test"), None, None).level == 2


def test_allow_list_does_not_delay_unrelated_terms(mod):
    f = mod.output_filter()
    assert f.feed("这是违禁词甲")[1] == Verdict(3, "demo_ban", -1)   # decided at once
    f = mod.output_filter()
    assert f.feed("白色情")[1] is None                                # could still be 白色情人节
    assert f.feed("人好")[1] == Verdict(2, "sexual", -1)


# ---------------------------------------------------------------- allow-list

def test_allow_list(mod):
    assert mod.check_input(user("祝你白色情人节快乐"), None, None) == SAFE
    assert mod.check_input(user("白色情人"), None, None).level == 2
    assert mod.check_input(user("白色情人节和色情"), None, None).level == 2
    # the allow-list is normalised too
    assert mod.check_input(user("白色情人節"), None, None) == SAFE


def test_allow_list_streaming(mod):
    text = "祝你白色情人节快乐"
    for cut in range(1, len(text)):
        out, stop, v = stream(mod.output_filter(), [text[:cut], text[cut:]])
        assert (out, stop, v) == (text, None, SAFE)
    out, stop, _ = stream(mod.output_filter(), ["白色", "情", "人", "好"])
    assert stop is not None and stop.level == 2 and out == "白"


def test_examples_files():
    m = Moderator.from_files([str(EXAMPLES / "lexicon.tsv")], str(EXAMPLES / "allow.txt"))
    assert m.check_input(user("白色情人节快乐"), None, None) == SAFE
    assert m.check_input(user("色情"), None, None).level == 2
    assert m.check_input(user("廣告詞乙"), None, None).level == 1


# ---------------------------------------------------------------- streaming output

def test_split_term_caught_and_never_emitted(mod):
    f = mod.output_filter()
    assert f.holdback == 6  # len("badword") - 1
    out, stop, _ = stream(f, ["你好，这是违禁", "词甲，后面的话"])
    assert stop == Verdict(3, "demo_ban", -1)
    assert out == "你好，这是"
    # after the stop, nothing more comes out
    assert f.feed("more") == ("", stop)
    assert f.finish() == ("", stop)


def test_split_term_every_cut_and_random_pieces(mod):
    prefix, term, suffix = "前面的文字，", "违\u200b禁词.甲", "后面的文字"
    text = prefix + term + suffix
    for cut in range(len(text) + 1):
        out, stop, _ = stream(mod.output_filter(), [text[:cut], text[cut:]])
        assert stop is not None and stop.level == 3
        assert out == prefix
    rng = random.Random(7)
    for _ in range(200):
        out, stop, _ = stream(mod.output_filter(), split_random(text, rng))
        assert stop is not None and out == prefix


def test_level2_output_stops(mod):
    out, stop, _ = stream(mod.output_filter(), ["内容是色", "情的，后面"])
    assert stop == Verdict(2, "sexual", -1) and stop.need_clear_history
    assert out == "内容是"


def test_masking_level1(mod):
    out, stop, v = stream(mod.output_filter(), ["买这个广告", "词乙吧"])
    assert stop is None and out == "买这个****吧" and v == Verdict(1, "ads")
    # one * per original character, including inserted punctuation and zero-width chars
    out, _, v = stream(mod.output_filter(), ["a Bad-Wo", "\u200brd b"])
    assert out == "a *********" + " b" and v.level == 1


def test_masking_random_pieces_matches_whole(mod):
    text = "开头 badword 中间广告词乙，再来一次 BADWORD！还有白色情人节。结束 badwords"
    expected = "开头 ******* 中间****，再来一次 *******！还有白色情人节。结束 badwords"
    out, stop, v = stream(mod.output_filter(), [text])
    assert (out, stop, v.level) == (expected, None, 1)
    rng = random.Random(3)
    for _ in range(200):
        out, stop, v = stream(mod.output_filter(), split_random(text, rng, 4))
        assert out == expected and stop is None and v.level == 1


def test_clean_stream_passes_unchanged(mod):
    text = "一段完全正常的回答，包含 English words, foo bar, f o o, 数字 123 和标点！" * 5
    rng = random.Random(1)
    for _ in range(50):
        out, stop, v = stream(mod.output_filter(), split_random(text, rng, 20))
        assert (out, stop, v) == (text, None, SAFE)


def test_holdback_limits_latency(mod):
    f = mod.output_filter()
    released = f.feed("一二三四五六七八九十")[0]
    assert released == "一二三四"  # the last holdback (6) normalised chars are held
    assert f.finish() == ("五六七八九十", SAFE)


# ---------------------------------------------------------------- reload, policy, overrides

def test_reload_without_restart(files):
    lex, allow = files
    m = Moderator.from_files([str(lex)], str(allow))
    assert m.check_input(user("新词丙"), None, None) == SAFE
    lex.write_text(LEXICON + "新词丙\tnew\t3\n", encoding="utf-8")
    m.reload()
    assert m.check_input(user("新词丙"), None, None) == Verdict(3, "new", -1)
    assert m.last_reload_error is None


def test_reload_failure_keeps_old(files):
    lex, allow = files
    m = Moderator.from_files([str(lex)], str(allow))
    lex.write_text("broken line without tabs\n", encoding="utf-8")
    m.reload()
    assert m.last_reload_error and "lexicon.tsv:1" in m.last_reload_error
    assert m.check_input(user("违禁词甲"), None, None).level == 3


def test_sighup_reload(files):
    if not hasattr(signal, "SIGHUP"):
        pytest.skip("no SIGHUP")
    lex, allow = files
    m = Moderator.from_files([str(lex)], str(allow))
    lex.write_text("新词丁\tnew\t2\n", encoding="utf-8")
    prev = install_sighup_reload(m)
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.time() + 10
        while m.check_input(user("新词丁"), None, None) == SAFE and time.time() < deadline:
            time.sleep(0.01)
        assert m.check_input(user("新词丁"), None, None).level == 2
        assert m.check_input(user("违禁词甲"), None, None) == SAFE
    finally:
        signal.signal(signal.SIGHUP, prev)


def test_sighup_install_outside_main_thread_is_harmless(mod):
    import threading
    result = []
    t = threading.Thread(target=lambda: result.append(install_sighup_reload(mod)))
    t.start()
    t.join()
    assert result == [None]


def test_policy_off(mod):
    assert mod.check_input(user("违禁词甲"), None, None, policy="off") == SAFE
    f = mod.output_filter("off")
    assert f.holdback == 0
    assert f.feed("违禁词甲") == ("违禁词甲", None)
    assert f.finish() == ("", SAFE)


def test_policy_strict(mod):
    # every hit at least level 2
    assert mod.check_input(user("广告词乙"), None, None, policy="strict") == Verdict(2, "ads", -1)
    assert mod.check_input(user("badword"), None, None, policy="strict").level == 2
    # wider normalisation: leetspeak, diacritics, Cyrillic look-alikes
    assert mod.check_input(user("f00b4r"), None, None) == SAFE
    assert mod.check_input(user("f00b4r"), None, None, policy="strict").level == 2
    assert mod.check_input(user("fóóbár"), None, None, policy="strict").level == 2
    assert mod.check_input(user("fооbаr"), None, None, policy="strict").level == 2  # Cyrillic о, а
    out, stop, _ = stream(mod.output_filter("strict"), ["ok 广告", "词乙"])
    assert out == "ok " and stop.level == 2


def test_unknown_policy(mod):
    with pytest.raises(ValueError):
        mod.check_input(user("x"), None, None, policy="lenient")


def test_category_level_override(files):
    lex, allow = files
    m = Moderator.from_files([str(lex)], str(allow), category_levels={"ads": 3, "sexual": 0})
    assert m.check_input(user("广告词乙"), None, None) == Verdict(3, "ads", -1)
    assert m.check_input(user("色情"), None, None) == SAFE
    assert m.check_input(user("违禁词甲"), None, None).level == 3


def test_parse_category_levels():
    assert parse_category_levels("ads=1, politics = 3") == {"ads": 1, "politics": 3}
    assert parse_category_levels("") == {}
    with pytest.raises(ValueError):
        parse_category_levels("ads=7")


def test_from_env(files):
    lex, allow = files
    m = Moderator.from_env({"QFSERVE_SAFETY_LEXICON": str(lex), "QFSERVE_SAFETY_ALLOW": str(allow),
                            "QFSERVE_SAFETY_CATEGORY_LEVELS": "ads=2"})
    assert m.check_input(user("广告词乙"), None, None).level == 2
    assert m.check_input(user("白色情人节"), None, None) == SAFE


def test_malformed_lexicon(tmp_path):
    p = tmp_path / "bad.tsv"
    p.write_text("ok\tcat\t2\nbad\tcat\t9\n", encoding="utf-8")
    with pytest.raises(LexiconError, match="bad.tsv:2"):
        Moderator.from_files([str(p)], None)
    with pytest.raises(LexiconError):
        Moderator.from_files([str(tmp_path / "missing.tsv")], None)


def test_no_lexicon_fast_path():
    m = Moderator.from_files([], None)
    assert not m.enabled
    assert m.check_input(user("违禁词甲"), "s", "u") == SAFE
    f = m.output_filter()
    assert f.holdback == 0 and f.feed("abc") == ("abc", None) and f.finish() == ("", SAFE)


# ---------------------------------------------------------------- metrics and logs

def _events(category, level, direction):
    return REGISTRY.get_sample_value("qfserve_moderation_events_total",
                                     {"category": category, "level": str(level), "direction": direction}) or 0.0


def test_metrics_counted(mod):
    before_in = _events("demo_ban", 3, "input")
    before_out = _events("ads", 1, "output")
    mod.check_input(user("违禁词甲"), None, None)
    stream(mod.output_filter(), ["广告词乙"])
    assert _events("demo_ban", 3, "input") == before_in + 1
    assert _events("ads", 1, "output") == before_out + 1


def test_logs_do_not_contain_user_text(mod, caplog):
    secret = "我的身份证号是12345，违禁词甲，请记住"
    with caplog.at_level(logging.DEBUG, logger="qfserve.safety"):
        mod.check_input(user(secret), None, None)
        stream(mod.output_filter(), [secret])
    assert caplog.records
    for r in caplog.records:
        msg = r.getMessage()
        assert "违禁词甲" not in msg and "身份证" not in msg


def test_random_streams_match_one_shot(mod):
    """Any split of any text gives the same released text and verdict as the whole text at once."""
    atoms = ["违禁词甲", "色情", "白色情人节", "白色情人", "广告词乙", "badword", "foobar", "ＦｏｏＢａｒ",
             "abc123", "\u200b", " ", "，", "。", "好", "的", "x", "bad", "word", "白", "色", "情", "\n",
             "廣告", "詞乙", "①", "class"]
    rng = random.Random(11)
    for policy in ("default", "strict"):
        for _ in range(300):
            text = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 12)))
            whole = stream(mod.output_filter(policy), [text])
            assert whole[0] in text or "*" in whole[0]
            for _ in range(5):
                parts = stream(mod.output_filter(policy), split_random(text, rng, 4))
                assert parts[0] == whole[0], (policy, text)
                assert (parts[2].level >= 2) == (whole[2].level >= 2), (policy, text)
                if whole[2].level < 2:
                    assert parts[2] == whole[2]
            # the stream stops exactly when the input check would close the chat
            v = mod.check_input(user(text), None, None, policy)
            assert (whole[2].level >= 2) == (v.level >= 2), (policy, text)
            if v.level < 2:
                assert whole[2].level == v.level
