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


# Where the official SDK (qianfan 0.4.12.3) sends `ChatCompletion(model=NAME)`: its built-in
# model → endpoint table (ERNIE-Lite-8K is its alias of ERNIE-Lite-8K-0308). The SDK has no entry
# for the two models marked None, so code naming them cannot reach a server by model name.
SDK_ENDPOINTS: dict[str, str | None] = {
    "ERNIE-Speed-8K": "ernie_speed",
    "ERNIE-Lite-8K": "ernie-lite-8k",
    "ERNIE-Lite-128K": None,
    "ERNIE-Tiny-8K": "ernie-tiny-8k",
    "ERNIE-Tiny-128K-0929": None,
    "ERNIE-Speed-128K": "ernie-speed-128k",
    "ERNIE-Character-8K": "ernie-char-8k",
    "ERNIE-Character-Fiction-8K": "ernie-char-fiction-8k",
}


def sdk_endpoint(model: str) -> str:
    """The api_path the SDK calls for `model`; ValueError when it has none."""
    get_profile(model)
    endpoint = SDK_ENDPOINTS.get(model)
    if endpoint is None:
        known = ", ".join(name for name, path in SDK_ENDPOINTS.items() if path)
        raise ValueError(f"the qianfan SDK has no endpoint for {model}, so its code cannot name it; "
                         f"publish it at an api_path of your choice (clients pass endpoint=…). "
                         f"--for-model knows: {known}")
    return endpoint
