"""The seed's eight model profiles and their input/output limits (qianfan-wire.md §4)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    max_input_chars: int
    max_input_tokens: int
    max_output_tokens: int


_8K_SDK = (11200, 7168, 2048)  # the SDK's figures for Speed/Lite 8K (Baidu's 2025 pages say 24000/6144)
_8K = (24000, 6144, 2048)
_128K = (507904, 126976, 4096)  # Lite-128K and Tiny-128K-0929 are unconfirmed: taken as the 128K class

PROFILES: dict[str, Profile] = {
    name: Profile(name, *limits)
    for name, limits in {
        "ERNIE-Speed-8K": _8K_SDK,
        "ERNIE-Lite-8K": _8K_SDK,
        "ERNIE-Lite-128K": _128K,
        "ERNIE-Tiny-8K": _8K,
        "ERNIE-Tiny-128K-0929": _128K,
        "ERNIE-Speed-128K": _128K,
        "ERNIE-Character-8K": _8K,
        "ERNIE-Character-Fiction-8K": _8K,
    }.items()
}

DEFAULT_PROFILE = "ERNIE-Speed-8K"


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of: {', '.join(PROFILES)}") from None
