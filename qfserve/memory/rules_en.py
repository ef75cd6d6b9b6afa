"""Level-1 extraction for English: first-person statements of stable facts, by sentence patterns.

Every pattern starts from "I" or "my", so facts are only ever about the speaker. Names and places
must be Capitalized words, which is what tells "I live in Boston" from "I live in fear". An
occupation must end in a word that names one, so "I'm a big fan" is not a job. Slots work as in
rules_zh: single-valued slots supersede, a preference's slot is its object so "I don't like coffee"
supersedes "I love coffee".
"""

from __future__ import annotations

import re

from qfserve.memory.facts import Fact

_NAME = r"(?P<v>[A-Z][A-Za-z'-]+(?:\s+[A-Z][A-Za-z'-]+){0,2})"
_PLACE = r"(?P<v>[A-Z][\w'.-]*(?:,?\s+[A-Z][\w'.-]*){0,3})"
_PHRASE = r"(?P<v>[^,.;!?]{2,60})"
_HYPOTHETICAL = re.compile(r"\b(?:if|imagine|pretend|suppose|wish)\b", re.I)
# A phrase ends at a conjunction that starts a new thought.
_PHRASE_END = re.compile(r"\s+(?:but|because|and i|so|since|although|though|when|while)\b.*$", re.I)
_PRONOUN_VALUE = re.compile(r"^(?:it|that|this|you|them|him|her|me|us|to ask|to know|what|which)\b", re.I)

_RELATIONS = (
    r"best friend|girlfriend|boyfriend|fianc[ée]e?|grandmother|grandfather|grandma|grandpa|husband|wife|partner|"
    r"daughter|son|kid|child|mother|mom|mum|father|dad|brother|sister|friend|boss|roommate|colleague|dog|cat"
)
_RELATIONS_PLURAL = r"daughters|sons|kids|children|brothers|sisters|dogs|cats|" + _RELATIONS

_OCCUPATIONS = frozenset(
    "nurse chef pilot engineer doctor lawyer student teacher scientist designer developer programmer architect"
    " accountant journalist photographer artist writer dentist surgeon pharmacist firefighter officer farmer"
    " driver manager consultant analyst researcher professor lecturer mechanic electrician plumber vet"
    " veterinarian cook waiter waitress cashier barista secretary clerk editor translator musician actor actress"
    " model athlete coach soldier entrepreneur freelancer intern physician therapist psychologist economist"
    " banker trader salesperson librarian carpenter tailor baker butcher painter director producer".split()
)



def _i(verbs: str) -> str:
    """Case-insensitive 'I <verbs>' with the usual adverbs in between."""
    return rf"\b(?i:i\s+(?:really\s+|also\s+|just\s+|recently\s+|currently\s+|now\s+|still\s+|absolutely\s+)?(?:{verbs}))\s+"


def _phrase(value: str) -> str | None:
    value = _PHRASE_END.sub("", value).strip()
    if not value or _PRONOUN_VALUE.match(value) or len(value) > 60:
        return None
    return value


def _article(noun: str) -> str:
    return ("an " if noun[0].lower() in "aeiou" else "a ") + noun


def _occupation(words: str) -> str | None:
    """The longest run of up to three words that ends in an occupation: 'software engineer at' → 'software engineer'."""
    parts = words.split()[:3]
    for end in range(len(parts), 0, -1):
        if parts[end - 1].lower() in _OCCUPATIONS:
            return " ".join(parts[:end])
    return None


_SIMPLE: list[tuple[re.Pattern, str, str]] = [
    # (pattern, slot, text); {v} is the captured value, {rel}/{what} other groups.
    (re.compile(r"\b(?i:my\s+name\s+is|call\s+me|i\s+am\s+called|i'm\s+called)\s+" + _NAME), "name", "The user's name is {v}"),
    (re.compile(r"\b(?i:i\s+am|i'm)\s+(?P<v>\d{1,3})(?:\s+(?i:years?\s+old)|(?=\s*(?:[,.;!]|$)))"), "age", "The user is {v} years old"),
    (re.compile(_i(r"live|am\s+living|reside|am\s+based") + r"(?i:in)\s+" + _PLACE), "location", "The user lives in {v}"),
    (re.compile(r"\b(?i:i'm\s+(?:living|based))\s+(?i:in)\s+" + _PLACE), "location", "The user lives in {v}"),
    (re.compile(_i(r"moved|relocated|have\s+moved|'ve\s+moved") + r"(?i:to)\s+" + _PLACE), "location", "The user lives in {v}"),
    (re.compile(r"\b(?i:i\s+am|i'm|i\s+come)\s+(?i:originally\s+)?(?i:from)\s+" + _PLACE), "hometown", "The user is from {v}"),
    (re.compile(r"\b(?i:i\s+was\s+born\s+in)\s+" + _PLACE), "hometown", "The user is from {v}"),
    (re.compile(r"\b(?i:i\s+work\s+(?:at|for)|i'm\s+working\s+(?:at|for))\s+(?P<v>[A-Z][\w&.-]*(?:\s+[A-Z][\w&.-]*){0,3})"),
     "workplace", "The user works at {v}"),
    (re.compile(rf"\b(?i:my\s+(?P<rel>{_RELATIONS})(?:'s\s+name\s+is|\s+is\s+called|\s+is\s+named))\s+" + _NAME),
     "relation:{rel}:name", "The user's {rel} is named {v}"),
]

_PHRASES: list[tuple[re.Pattern, str, str]] = [
    (re.compile(r"\b(?i:my\s+favou?rite\s+(?P<what>[a-z ]{1,20}?)\s+is)\s+" + _PHRASE), "favorite:{what}",
     "The user's favorite {what} is {v}"),
    (re.compile(_i(r"don't\s+like|do\s+not\s+like|dont\s+like|don't\s+enjoy|hate|dislike|can't\s+stand|cannot\s+stand|detest") + _PHRASE),
     "pref:{v}", "The user dislikes {v}"),
    (re.compile(_i(r"like|love|enjoy|adore|prefer") + _PHRASE), "pref:{v}", "The user likes {v}"),
    (re.compile(r"\b(?i:i\s+am|i'm)\s+(?i:allergic\s+to)\s+" + _PHRASE), "allergy:{v}", "The user is allergic to {v}"),
    (re.compile(r"\b(?i:i\s+am|i'm|i)\s+(?i:planning|plan|intend|intending)\s+(?i:to)\s+" + _PHRASE), "plan:{v}",
     "The user plans to {v}"),
    (re.compile(rf"\b(?i:i\s+have)\s+(?P<v>(?i:an?|one|two|three|four|\d+)\s+(?:[a-z]+\s+)?(?i:{_RELATIONS_PLURAL}))\b"),
     "has:{v}", "The user has {v}"),
]

_OCCUPATION = re.compile(r"\b(?i:i\s+am\s+an?|i'm\s+an?|i\s+work\s+as\s+an?|my\s+(?:job|occupation|profession)\s+is\s+an?)\s+(?P<v>[A-Za-z -]+)")


def extract_en(sentences: list[tuple[str, str]]) -> list[Fact]:
    facts: list[Fact] = []
    for sentence, ending in sentences:
        if ending.startswith("?") or _HYPOTHETICAL.search(sentence):
            continue
        for pattern, slot, text in _SIMPLE:
            for m in pattern.finditer(sentence):
                groups = {k: v.strip() for k, v in m.groupdict().items() if v}
                groups["rel"] = groups.get("rel", "").lower()
                facts.append(Fact(slot.format(**groups).lower(), text.format(**groups)))
        for pattern, slot, text in _PHRASES:
            for m in pattern.finditer(sentence):
                value = _phrase(m["v"])
                if value is None:
                    continue
                groups = {**{k: v.strip().lower() for k, v in m.groupdict().items() if v}, "v": value}
                facts.append(Fact(slot.format(**{**groups, "v": value.lower()}), text.format(**groups)))
        for m in _OCCUPATION.finditer(sentence):
            if job := _occupation(m["v"]):
                facts.append(Fact("occupation", f"The user works as {_article(job.lower())}"))
    return facts
