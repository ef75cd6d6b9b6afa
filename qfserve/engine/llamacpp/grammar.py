"""JSON schema → GBNF grammar for llama.cpp's grammar sampler (constrained decoding).

The conversion is llama-cpp-python's own (`json_schema_to_gbnf`), with two fixes:
- its string character rule admits raw control characters, which strict JSON parsers reject;
  the rule here excludes them, as llama.cpp's upstream converter does;
- a literal `prefix` (the call marker) may come before the JSON.
Runs in the HTTP process (cached per schema), so a schema it cannot handle is refused before the
answer starts, and the engine worker's decode loop does no conversion work.
"""

from __future__ import annotations

import functools
import json

from qfserve.engine.base import Constraint

_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'
CALL_PROPERTY_ORDER = ["name", "arguments"]


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


@functools.lru_cache(maxsize=256)
def gbnf(json_schema: str, prefix: str = "") -> str:
    """The grammar for `prefix` followed by JSON valid against `json_schema` (JSON text).
    Raises ValueError when the schema cannot be converted."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        grammar = json_schema_to_gbnf(json_schema, CALL_PROPERTY_ORDER)
    except (ValueError, KeyError, TypeError, AttributeError, AssertionError, RecursionError, NotImplementedError) as error:
        raise ValueError(f"unsupported JSON schema: {error}") from None
    lines = grammar.splitlines()
    if not any(line.startswith("root ::= ") for line in lines):
        raise ValueError("unsupported JSON schema")
    lines = [
        line.replace(_LOOSE_CHAR, _STRICT_CHAR, 1) if line.startswith(_LOOSE_CHAR) else line
        for line in lines
    ]
    lines = ["qfserve-answer ::= " + line[len("root ::= "):] if line.startswith("root ::= ") else line for line in lines]
    lines.append("root ::= " + (_literal(prefix) + " " if prefix else "") + "qfserve-answer")
    return "\n".join(lines) + "\n"


def with_grammar(constraint: Constraint) -> Constraint:
    """The constraint with its GBNF filled in (for the worker)."""
    if constraint.grammar is not None:
        return constraint
    from dataclasses import replace

    return replace(constraint, grammar=gbnf(constraint.json_schema, constraint.prefix))


def check_grammar(vocab, grammar: str) -> None:
    """Raise ValueError unless llama.cpp itself accepts `grammar` (its parser is the judge)."""
    from llama_cpp import llama_cpp as L

    sampler = L.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        raise ValueError("unsupported JSON schema")
    L.llama_sampler_free(sampler)


def schema_text(schema: dict) -> str:
    return json.dumps(schema, ensure_ascii=False, sort_keys=True)
