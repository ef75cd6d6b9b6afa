"""Level-1 extraction for Chinese: stable facts a user states about themself, by clause patterns.

A sentence is cut into clauses at commas. A clause that starts with 我 makes the user its subject,
and following clauses (in later sentences too) with no subject of their own inherit it, so 我叫李雷，是一名医生，住在杭州
gives three facts. Patterns are anchored at the clause start (after 我), which is what keeps
我妈妈是医生 from being read as the user's own occupation. Names and places are cut to the
words jieba tags as such (nr / ns), and what follows is read as a clause of its own, so a run-on
like 我叫李雷住在杭州 still gives two facts.

Each fact gets a slot. Single-valued slots (name, age, location, hometown, occupation, workplace)
let a newer statement supersede an older one; preferences share a slot per object, so 不喜欢X
supersedes 喜欢X; plans and relationships are keyed by their own text and only de-duplicate.
"""

from __future__ import annotations

import re
from typing import Callable

from qfserve.memory.facts import Fact
from qfserve.memory.text import pos_words

_QUESTION_WORDS = re.compile(r"什么|哪|谁|几|怎么|多少|吗|啥")
_PRONOUN_VALUE = re.compile(r"^(?:你|您|他|她|它|这|那|这个|那个|这样|那样|自己|我|大家)")
_TRAILING = "了啦呢哦哈呀啊吧嘛噢喔~～ "
_HYPOTHETICAL = re.compile(r"如果|假如|要是|假设|假装|扮演|比如|例如|梦见|的话")
_LEADING_CONNECTOR = re.compile(r"^(?:而且|并且|然后|另外|其实|不过|但是|所以|后来|现在|目前|最近)+")
# A clause without a subject inherits one only when it starts like a predicate about a person.
_PREDICATE_START = re.compile(
    r"^(?:是|叫|姓|住|在|喜欢|爱|讨厌|不|很|非常|特别|最|超|比较|打算|计划|准备|想去|来自|今年|搬|从事|做|当|"
    r"对|有|也|还|就|已经|一直|老家|家乡|出生)"
)

_RELATIONS = (
    "男朋友|女朋友|未婚妻|未婚夫|好朋友|妻子|老婆|太太|丈夫|老公|男友|女友|对象|儿子|女儿|孩子|宝宝|"
    "妈妈|母亲|爸爸|父亲|哥哥|姐姐|弟弟|妹妹|爷爷|奶奶|外公|外婆|闺蜜|朋友|同事|老板|室友|猫|狗|宠物"
)
_OCCUPATION_SUFFIXES = tuple("师员生家者工手官医警匠商士")
_OCCUPATIONS = (
    "司机", "老板", "经理", "主管", "总监", "护士", "模特", "演员", "农民", "会计", "保安", "店主",
    "主播", "博主", "自由职业", "公务员", "创业者", "律师", "记者", "教授", "厨师", "警察", "工人",
)



def _clean(value: str) -> str:
    return value.strip().rstrip(_TRAILING).strip("“”\"'《》「」")


def _acceptable(value: str) -> bool:
    return 0 < len(value) <= 20 and not _QUESTION_WORDS.search(value) and not _PRONOUN_VALUE.match(value)


def _is_occupation(value: str) -> bool:
    return "的" not in value and "很" not in value and (
        value.endswith(_OCCUPATION_SUFFIXES) or value.endswith(_OCCUPATIONS)
    )


def _leading(value: str, flags: tuple[str, ...], fallback_len: int) -> tuple[str, str]:
    """Split `value` into the leading words whose jieba flag starts with one of `flags`, and the rest.

    A short value is taken whole even when jieba does not know it (欧阳娜娜 tags as place + name).
    """
    if len(value) <= fallback_len and "的" not in value:
        return value, ""
    taken = ""
    for word, flag in pos_words(value):
        if not flag.startswith(flags):
            break
        taken += word
    return taken, value[len(taken):]


# Each rule: a pattern over the clause body (the clause minus its leading 我), and a builder that
# turns the match into (fact or None, remainder to read as a further clause).
Builder = Callable[[re.Match], tuple["Fact | None", str]]


def _name(m: re.Match) -> tuple[Fact | None, str]:
    name, rest = _leading(_clean(m["v"]), ("nr", "eng"), 4)
    return (Fact("name", f"用户名叫{name}") if _acceptable(name) else None), rest


def _place(slot: str, template: str, fallback_len: int = 6) -> Builder:
    def build(m: re.Match) -> tuple[Fact | None, str]:
        place, rest = _leading(_clean(m["v"]), ("ns",), fallback_len)
        return (Fact(slot, template.format(place)) if _acceptable(place) else None), rest

    return build


def _hometown_person(m: re.Match) -> tuple[Fact | None, str]:
    # 我是杭州人: only when jieba reads the whole thing as place names, so 我是好人 says nothing.
    words = pos_words(m["v"])
    if words and all(flag.startswith("ns") for _, flag in words):
        return Fact("hometown", f"用户来自{m['v']}"), ""
    return None, ""


def _occupation(m: re.Match) -> tuple[Fact | None, str]:
    value = _clean(m["v"])
    if not _is_occupation(value):
        return None, ""
    return Fact("occupation", "用户" + _clean(m.group(0))), ""


def _is_name(m: re.Match) -> tuple[Fact | None, str]:
    # 我是李雷: a name only when jieba tags it as one (是医生 was taken by _occupation first).
    value = _clean(m["v"])
    words = pos_words(value)
    if len(words) == 1 and words[0][1].startswith(("nr", "eng")):
        return Fact("name", f"用户名叫{value}"), ""
    return None, ""


def _verbatim(slot_prefix: str) -> Builder:
    """The clause itself, with 用户 as subject; the slot is keyed by the captured object."""

    def build(m: re.Match) -> tuple[Fact | None, str]:
        value = _clean(m["v"])
        if not _acceptable(value):
            return None, ""
        slot = slot_prefix if slot_prefix in ("occupation", "workplace") else f"{slot_prefix}:{value}"
        return Fact(slot, "用户" + _clean(m.group(0))), ""

    return build


def _age(m: re.Match) -> tuple[Fact | None, str]:
    return Fact("age", f"用户今年{m['v']}岁"), ""


def _favorite(m: re.Match) -> tuple[Fact | None, str]:
    value = _clean(m["v"])
    if not _acceptable(value):
        return None, ""
    return Fact(f"favorite:{m['what']}", f"用户最喜欢的{m['what']}是{value}"), ""


_ADVERB = r"(?:很|非常|特别|超级?|真的|最|比较|也|还|一直)?"
_RULES: list[tuple[re.Pattern, Builder]] = [
    (re.compile(r"^(?:的)?(?:名字|姓名)(?:是|叫)(?P<v>.+)$"), _name),
    (re.compile(r"^(?:名)?叫(?P<v>.+)$"), _name),
    (re.compile(r"^(?:今年)?(?P<v>\d{1,3}|[一二三四五六七八九十]{1,3})岁"), _age),
    (re.compile(r"^(?:现在|目前|已经)?(?:住在|居住在|生活在|定居在)(?P<v>.+)$"), _place("location", "用户住在{}")),
    # Bare 住 only before a known place name: 我住院了 is not an address.
    (re.compile(r"^(?:现在|目前|已经)?住(?P<v>.+)$"), _place("location", "用户住在{}", fallback_len=0)),
    (re.compile(r"^(?:已经)?(?:搬到|搬去|搬家到|移居到?|搬来)了?(?P<v>.+)$"), _place("location", "用户住在{}")),
    (re.compile(r"^(?:家)?在(?P<v>.+?)(?:住|生活|定居)$"), _place("location", "用户住在{}")),
    (re.compile(r"^(?:来自|出生在|出生于|生在)(?P<v>.+)$"), _place("hometown", "用户来自{}")),
    (re.compile(r"^(?:的)?(?:老家|家乡)(?:是|在)(?P<v>.+)$"), _place("hometown", "用户来自{}")),
    (re.compile(r"^是(?P<v>.+)人$"), _hometown_person),
    (re.compile(r"^(?:的)?(?:职业|工作)是(?P<v>.+)$"), _verbatim("occupation")),
    (re.compile(r"^是(?:一)?(?:名|位|个)?(?P<v>.+)$"), _occupation),
    (re.compile(r"^(?:在\S+?)?(?:当|做|担任)(?P<v>.+)$"), _occupation),
    (re.compile(r"^是(?P<v>.+)$"), _is_name),
    (re.compile(r"^从事(?P<v>.+)$"), _verbatim("occupation")),
    (re.compile(r"^在(?P<v>.+?)(?:工作|上班|任职|实习)$"), _verbatim("workplace")),
    (re.compile(r"^最喜欢的(?P<what>[\u4e00-\u9fff]{1,6}?)是(?P<v>.+)$"), _favorite),
    (re.compile(rf"^{_ADVERB}(?:不太|不|很不|一点也不|一点都不|并不)(?:喜欢|爱)(?P<v>.+)$"), _verbatim("pref")),
    (re.compile(rf"^{_ADVERB}(?:讨厌|厌恶|受不了|反感)(?P<v>.+)$"), _verbatim("pref")),
    (re.compile(r"^不(?P<v>(?:吃|喝).+)$"), _verbatim("pref")),
    (re.compile(rf"^{_ADVERB}(?:喜欢|爱|热爱|酷爱|偏爱)(?P<v>.+)$"), _verbatim("pref")),
    (re.compile(r"^对(?P<v>.+?)过敏$"), _verbatim("allergy")),
    (re.compile(r"^(?:(?!不|没)\S){0,4}?(?:打算|计划|准备|想去)(?P<v>.{2,})$"), _verbatim("plan")),
]

# Relationships keep 我 in the pattern: 我的女朋友叫韩梅梅 is about someone else, told by the user.
_RELATION_NAME = re.compile(rf"^我(?:的)?(?P<rel>{_RELATIONS})(?:叫|名叫|名字叫|的名字是)(?P<v>.+)$")
_RELATION_IS = re.compile(rf"^我(?:的)?(?P<rel>{_RELATIONS})是(?P<v>.+)$")
_HAS_RELATION = re.compile(rf"^我有(?P<v>(?:[一两二三四五六七八九十几\d]+)?(?:个|只|位|条)?(?:{_RELATIONS}).*)$")


def _relation(clause: str) -> Fact | None:
    if m := _RELATION_NAME.match(clause):
        name, _ = _leading(_clean(m["v"]), ("nr", "eng"), 4)
        if name and _acceptable(name):
            return Fact(f"relation:{m['rel']}:name", f"用户的{m['rel']}叫{name}")
    if m := _RELATION_IS.match(clause):
        value = _clean(m["v"])
        if _acceptable(value):
            return Fact(f"relation:{m['rel']}:{value}", f"用户的{m['rel']}是{value}")
    if m := _HAS_RELATION.match(clause):
        value = _clean(m["v"])
        if _acceptable(value):
            return Fact(f"has:{value}", f"用户有{value}")
    return None


def _read_body(body: str) -> list[Fact]:
    """Facts from a clause body whose subject is the user; follows remainders of run-on clauses."""
    facts = []
    for _ in range(4):  # a run-on clause rarely packs more than a few facts; bounds the loop
        body = _LEADING_CONNECTOR.sub("", body).strip()
        if not body:
            break
        for pattern, build in _RULES:
            if m := pattern.match(body):
                fact, rest = build(m)
                if fact is not None:
                    facts.append(fact)
                    body = rest
                    break
        else:
            break
    return facts


def extract_zh(sentences: list[tuple[str, str]]) -> list[Fact]:
    facts: list[Fact] = []
    # The subject carries over clause to clause and sentence to sentence: 我住在杭州。后来搬到上海了。
    user_is_subject = False
    for sentence, ending in sentences:
        if ending.startswith(("？", "?")) or _HYPOTHETICAL.search(sentence):
            user_is_subject = False
            continue
        for clause in re.split(r"[，,、：:]", sentence):
            clause = _LEADING_CONNECTOR.sub("", clause.strip())
            if not clause or _QUESTION_WORDS.search(clause[-1]):
                user_is_subject = False
                continue
            if relation := _relation(clause):
                facts.append(relation)
                user_is_subject = False
                continue
            if clause.startswith("我") and not clause.startswith("我们"):
                user_is_subject = True
                facts.extend(_read_body(clause[1:]))
            elif user_is_subject and _PREDICATE_START.match(clause):
                facts.extend(_read_body(clause))
            else:
                user_is_subject = False
    return facts
