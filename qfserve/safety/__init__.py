"""Lexicon-based moderation (input check, streaming output filter) for the Qianfan ``flag`` /
``need_clear_history`` / ``ban_round`` fields. See :mod:`.moderator` for the semantics."""

from .lexicon import LexiconError
from .metrics import MODERATION_EVENTS
from .moderator import (
    POLICIES,
    SAFE,
    Moderator,
    OutputFilter,
    Verdict,
    install_sighup_reload,
    parse_category_levels,
)
from .normalize import normalise

__all__ = [
    "LexiconError",
    "MODERATION_EVENTS",
    "Moderator",
    "OutputFilter",
    "POLICIES",
    "SAFE",
    "Verdict",
    "install_sighup_reload",
    "normalise",
    "parse_category_levels",
]
