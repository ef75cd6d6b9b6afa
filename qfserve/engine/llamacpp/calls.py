"""Function calls on the embedded engine, on the HTTP side: the constraint sent to the worker, and
the event stream that turns a call's text (tool_prompt's syntax) into `FinishEvent.call`.

The worker samples a call under a grammar; its tokens arrive as ordinary TokenEvents. This wrapper
holds back answer text while it could still be the start of the call marker, swallows the text of
a call (its tokens still count), and at the end parses the call. A call that did not complete (cut
by max_output_tokens or a stop string) is released as plain text, so a returned call is always
whole and valid against its schema.
"""

from __future__ import annotations

from dataclasses import replace
from typing import AsyncIterator

from qfserve.engine import tool_prompt
from qfserve.engine.base import Constraint, EngineEvent, FinishEvent, GenerateRequest, TokenEvent, Tools
from qfserve.engine.llamacpp.grammar import check_grammar, gbnf, schema_text, with_grammar

# tool_choice `auto`: the answer is a call when the marker's first token is at least this likely at
# the start of the answer (or when it is sampled). Measured on the default 135M model with one
# weather function: 0.05-0.22 for weather questions, 0.01-0.14 for others — its decisions are rough
# at any threshold; a model fine-tuned on the syntax separates them far better.
# QFSERVE_TOOL_CALL_THRESHOLD=1 leaves the decision to sampling alone.
DEFAULT_CALL_THRESHOLD = 0.1


def tools_constraint(tools: Tools, threshold: float) -> Constraint:
    schema = schema_text(tool_prompt.call_schema(tools))
    return Constraint(
        json_schema=schema,
        prefix=tool_prompt.CALL_MARKER,
        lazy=not tools.forced,
        threshold=threshold,
        grammar=gbnf(schema, tool_prompt.CALL_MARKER),
    )


def output_constraint(constraint: Constraint) -> Constraint:
    """Structured output (`response_format`): the schema with tool_prompt's caps on open strings and
    arrays (so a rambling model still closes the JSON within max_tokens), its grammar filled in."""
    if constraint.grammar is not None:
        return constraint
    schema = tool_prompt.bounded_text(constraint.json_schema)
    return with_grammar(replace(constraint, json_schema=schema))


def check(tools: Tools, vocab, threshold: float) -> None:
    """Raise ValueError when the functions' schemas cannot become a grammar llama.cpp accepts."""
    check_grammar(vocab, tools_constraint(tools, threshold).grammar)


def constrained(request: GenerateRequest, threshold: float) -> GenerateRequest:
    """The request as the worker needs it: a call's constraint added, grammars filled in."""
    params = request.params
    if request.tools is not None:
        constraint = tools_constraint(request.tools, threshold)
        # A stop string inside a forced call's JSON would only cut it short.
        stop = () if request.tools.forced else params.stop
        return replace(request, params=replace(params, constraint=constraint, stop=stop))
    if params.constraint is not None and params.constraint.grammar is None:
        return replace(request, params=replace(params, constraint=output_constraint(params.constraint)))
    return request


class CallStream:
    """Wraps one request's event stream (same async-iterator interface, aclose cancels)."""

    def __init__(self, events: AsyncIterator[EngineEvent], tools: Tools) -> None:
        self._events = events
        self._tools = tools
        self._seen = ""  # answer text from the start while it may still be (or is) a call
        self._deciding = True  # the answer so far is a prefix of the marker
        self._calling = False

    def __aiter__(self) -> "CallStream":
        return self

    async def __anext__(self) -> EngineEvent:
        event = await self._events.__anext__()
        if isinstance(event, TokenEvent):
            return replace(event, text=self._visible(event.text))
        return self._finish(event)

    async def aclose(self) -> None:
        await self._events.aclose()

    def _visible(self, text: str) -> str:
        if self._calling:
            self._seen += text
            return ""
        if not self._deciding:
            return text
        self._seen += text
        marker = tool_prompt.CALL_MARKER
        if self._seen.startswith(marker):
            self._calling, self._deciding = True, False
            return ""
        if marker.startswith(self._seen):
            return ""  # still undecided
        self._deciding = False
        released, self._seen = self._seen, ""
        return released

    def _finish(self, event: FinishEvent) -> FinishEvent:
        if self._calling and event.reason == "stop" and event.matched_stop is None:
            call = tool_prompt.parse_call(self._seen + event.text, self._tools)
            if call is not None:
                return replace(event, text="", call=call)
        # Not a (complete) call: whatever was held back is answer text after all.
        held, self._seen = self._seen, ""
        return replace(event, text=held + event.text)
