"""What differs between OpenAI-compatible servers: how a conversation is counted, how a request is
sent, and what a streamed chunk says.

- **vLLM** (`vllm`): `POST /tokenize` with `messages` applies the model's own chat template and
  tokenizer on the replica; the token ids it returns are sent as the `prompt` of `/v1/completions`,
  so one template is applied once and the tokens counted are the tokens run. Stop strings are
  matched upstream (`stop_reason` names the one that matched); usage comes in the stream's last
  chunk (`stream_options.include_usage`).
- **llama-cpp-python** (`llama-cpp`, `python -m llama_cpp.server`): its `/extras/tokenize` takes
  text only, and `/v1/completions` takes a text prompt. The gateway renders the chat template it
  was given at `engine add --chat-template` (read from the GGUF), counts the rendered text with
  the replica's `/extras/tokenize`, and sends that same text, which the replica tokenizes the same
  way (`special=True`, its own BOS rule). The server cannot say whether a stop string or the end of
  text ended an answer, so stop strings are matched here and the stream is closed at the match.
  It reports no usage while streaming: completion tokens are counted one per streamed piece.
"""

from __future__ import annotations

from dataclasses import dataclass

from qfserve.engine.base import GenerateRequest

VLLM = "vllm"
LLAMA_CPP = "llama-cpp"
DIALECTS = (VLLM, LLAMA_CPP)


@dataclass(frozen=True)
class ChatTemplate:
    """A chat template the gateway renders itself (servers without `/tokenize` over messages)."""

    source: str
    bos_token: str = ""
    eos_token: str = ""

    @classmethod
    def from_options(cls, options: dict) -> "ChatTemplate | None":
        found = options.get("chat_template")
        if not found:
            return None
        return cls(found, options.get("bos_token", ""), options.get("eos_token", ""))

    def render(self, messages: list[dict[str, str]], system: str | None) -> str:
        from qfserve.engine.prompt import _template_environment  # jinja, as Hugging Face renders it

        turns = list(messages)
        if system is not None:
            turns = [{"role": "system", "content": system}, *turns]
        template = _template_environment().from_string(self.source)
        return template.render(messages=turns, add_generation_prompt=True,
                               bos_token=self.bos_token, eos_token=self.eos_token)


def completion_body(dialect: str, model: str, request: GenerateRequest, prompt_text: str | None) -> dict:
    """The `/v1/completions` body for one request (always streamed; see the README's mapping table).

    The embedded engine's sampling defaults (top_k, min_p) are sent explicitly, so a service answers
    alike on both engines. The penalty window has no per-request field on either server: vLLM
    penalises the whole sequence, llama-cpp-python uses its `--last_n_tokens_size` (64, as embedded).
    """
    p = request.params
    body: dict = {
        "model": model,
        "stream": True,
        "max_tokens": p.max_tokens,
        "min_tokens": p.min_tokens,
        "temperature": p.temperature,
        # Qianfan allows top_p 0 (the most likely token only); vLLM wants it above 0.
        "top_p": p.top_p if p.top_p > 0 or dialect != VLLM else 1e-6,
        "top_k": p.top_k,
        "min_p": p.min_p,
        "frequency_penalty": p.frequency_penalty,
        "presence_penalty": p.presence_penalty,
    }
    if p.seed is not None:
        body["seed"] = p.seed
    if p.logprobs:
        body["logprobs"] = p.top_logprobs  # /v1/completions: the number of alternatives per token
    if dialect == VLLM:
        body.update(
            prompt=list(request.prompt_tokens),
            repetition_penalty=p.repeat_penalty,
            stop=list(p.stop),
            stream_options={"include_usage": True},
            return_token_ids=True,
            request_id=request.request_id,
        )
    else:
        body.update(prompt=prompt_text or "", repeat_penalty=p.repeat_penalty)
    return body


def is_context_error(status: int, payload) -> bool:
    """An upstream refusal because prompt + answer exceed the model's context."""
    if status != 400:
        return False
    text = str(payload).lower()
    return any(mark in text for mark in ("maximum context length", "context_length_exceeded",
                                         "context window", "exceed context", "max_model_len"))


def error_message(payload) -> str:
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if payload.get("detail"):
            return str(payload["detail"])
        if payload.get("message"):
            return str(payload["message"])
    return str(payload)[:300]
