"""Shared fixtures for the fine-tuning tests: the base model path and a llama.cpp loader."""

from __future__ import annotations

import contextlib

import pytest

pytest.importorskip("torch", reason="the sft tests need the train extra")
pytest.importorskip("peft", reason="the sft tests need the train extra")

from qfserve.sft.base import default_model_path  # noqa: E402


@pytest.fixture(scope="session")
def base_gguf() -> str:
    try:
        return default_model_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@contextlib.contextmanager
def _without_extra_buffer_types():
    """The high-level `Llama` cannot turn off llama.cpp's extra (repacking) buffer types, which
    on this CPU pick ggml's AMX kernels, and AMX faults here (the engine sets
    `use_extra_bufts = False` for the same reason, see qfserve/engine/llamacpp/native.py).
    So its source of default model params is patched for the duration of the load."""
    import llama_cpp.llama as high_level

    original = high_level.llama_cpp.llama_model_default_params

    def patched():
        params = original()
        params.use_extra_bufts = False
        return params

    high_level.llama_cpp.llama_model_default_params = patched
    try:
        yield
    finally:
        high_level.llama_cpp.llama_model_default_params = original


@pytest.fixture(scope="session")
def load_llama():
    """load_llama(model_path, lora_path=None, **kw) → llama_cpp.Llama, quiet, on 1 thread
    (the fastest on a shared 2-core machine)."""
    import llama_cpp

    def load(model_path: str, lora_path: str | None = None, **kwargs):
        with _without_extra_buffer_types():
            return llama_cpp.Llama(
                model_path=model_path, lora_path=lora_path, n_ctx=512, n_threads=1,
                n_threads_batch=1, seed=0, verbose=False, **kwargs,
            )

    return load


def greedy_reply(llm, question: str, max_tokens: int = 24) -> str:
    result = llm.create_chat_completion(
        [{"role": "user", "content": question}], temperature=0.0, max_tokens=max_tokens
    )
    return result["choices"][0]["message"]["content"]
