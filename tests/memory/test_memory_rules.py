"""Level-1 extraction: the rules alone, Chinese and English."""

import pytest

from qfserve.memory.rules import extract_rules


def facts(text):
    return {f.slot: f.text for f in extract_rules(text)}


def test_three_chinese_facts_from_one_sentence():
    assert facts("我叫李雷，是一名医生，住在杭州") == {
        "name": "用户名叫李雷",
        "occupation": "用户是一名医生",
        "location": "用户住在杭州",
    }


def test_chinese_run_on_clause_still_splits_into_facts():
    assert facts("我叫李雷住在杭州") == {"name": "用户名叫李雷", "location": "用户住在杭州"}


@pytest.mark.parametrize(
    "text, slot, fact",
    [
        ("我搬到上海了", "location", "用户住在上海"),
        ("我今年28岁", "age", "用户今年28岁"),
        ("我是杭州人", "hometown", "用户来自杭州"),
        ("我在腾讯工作", "workplace", "用户在腾讯工作"),
        ("我很喜欢吃火锅", "pref:吃火锅", "用户很喜欢吃火锅"),
        ("我不喜欢吃火锅", "pref:吃火锅", "用户不喜欢吃火锅"),
        ("我对花生过敏", "allergy:花生", "用户对花生过敏"),
        ("我打算明年去日本旅游", "plan:明年去日本旅游", "用户打算明年去日本旅游"),
        ("我的女朋友叫韩梅梅", "relation:女朋友:name", "用户的女朋友叫韩梅梅"),
        ("我最喜欢的颜色是蓝色", "favorite:颜色", "用户最喜欢的颜色是蓝色"),
    ],
)
def test_chinese_fact_kinds(text, slot, fact):
    assert facts(text) == {slot: fact}


@pytest.mark.parametrize(
    "text",
    ["我叫什么名字？", "你是一名医生", "如果我是医生", "要是我妈妈是医生", "我是好人", "我爱你", "我住院了", "帮我写一首诗", "我不打算去了"],
)
def test_chinese_questions_others_and_noise_give_no_user_fact(text):
    assert not any(slot in ("name", "occupation", "location") for slot in facts(text)), facts(text)


def test_english_facts():
    found = facts("Hi, my name is Alice Smith. I'm a software engineer at Google and I live in San Francisco.")
    assert found == {
        "name": "The user's name is Alice Smith",
        "occupation": "The user works as a software engineer",
        "location": "The user lives in San Francisco",
    }
    assert facts("I love coffee but I hate tea.") == {"pref:coffee": "The user likes coffee", "pref:tea": "The user dislikes tea"}
    assert facts("I moved to Seattle last year") == {"location": "The user lives in Seattle"}
    assert facts("My wife's name is Carol") == {"relation:wife:name": "The user's wife is named Carol"}
    assert facts("I'm planning to visit Japan next spring") == {"plan:visit japan next spring": "The user plans to visit Japan next spring"}


@pytest.mark.parametrize("text", ["Do I live in Boston?", "I live in fear", "I am a big fan of jazz", "I love you", "I'd like a coffee please", "If I were a doctor"])
def test_english_noise_gives_nothing(text):
    assert facts(text) == {}


def test_later_statement_in_one_message_wins_its_slot():
    assert facts("我住在杭州。后来搬到上海了") == {"location": "用户住在上海"}
    assert facts("I live in Boston. I moved to Seattle.") == {"location": "The user lives in Seattle"}
