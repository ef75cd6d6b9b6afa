"""A fact about the user as the extractors find it, before it is stored as a memory."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Fact:
    # What the fact is about: a newer fact with the same slot supersedes the older one.
    slot: str
    # The sentence given to the model, with the user in the third person ("用户住在杭州").
    text: str
