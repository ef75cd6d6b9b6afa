"""Can the embedded engine hold what a service's profile promises? Checked when it is published.

A profile promises inputs of up to `max_input_tokens` and answers of up to `max_output_tokens`;
one sequence of the engine holds both in the shared KV pool. The pool is sized by the server's
settings (QFSERVE_KV_CELLS / QFSERVE_CTX_PER_SEQ, or `kv_cells` / `ctx_per_seq` in the data dir's
qfserve.toml): flags given to a separate `qfserve serve` are not known here.
"""

from __future__ import annotations

import os
from pathlib import Path

from qfserve.services.profiles import get_profile


def capacity_notes(profile_name: str, model: str, data_dir: Path) -> list[str]:
    """Raise ValueError when the configured pool can never hold the profile's longest request;
    return warnings (the profile goes past the model's trained context) otherwise."""
    from qfserve.config import load_settings
    from qfserve.services.engines import resolve_model

    profile = get_profile(profile_name)
    path = resolve_model(model)
    if not (os.path.isfile(path) and path.endswith(".gguf")):
        return []  # not an embedded model: its server decides
    settings = load_settings(data_dir=data_dir)
    per_sequence = settings.seq_limit
    longest = profile.max_input_tokens + profile.max_output_tokens
    if longest > per_sequence:
        raise ValueError(
            f"profile {profile.name} promises {profile.max_input_tokens} input + {profile.max_output_tokens} output tokens "
            f"= {longest}, but the engine's configuration (kv_cells {settings.kv_pool_cells}, parallel {settings.parallel}"
            f"{', ctx_per_seq ' + str(settings.ctx_per_seq) if settings.ctx_per_seq else ''}"
            f"{', kv_unified' if settings.kv_unified else ''}) lets one sequence hold {per_sequence} KV cells: "
            f"raise QFSERVE_CTX_PER_SEQ / QFSERVE_KV_CELLS (or ctx_per_seq / kv_cells in qfserve.toml) to hold {longest}, "
            "or choose a smaller profile"
        )
    trained = _trained_context(path)
    if trained and longest > trained:
        return [f"profile {profile.name} allows {longest} tokens per request (input + output), more than the "
                f"{trained} that {os.path.basename(path)} was trained on: answers near the limit may degrade"]
    return []


def _trained_context(path: str) -> int:
    from qfserve.engine.prompt import ChatPrompt

    try:
        return ChatPrompt(path).n_ctx_train
    except (ValueError, OSError):
        return 0
