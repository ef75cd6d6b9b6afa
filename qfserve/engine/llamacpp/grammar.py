"""JSON schema → GBNF grammar for llama.cpp's grammar sampler (constrained decoding).

The conversion is llama-cpp-python's own (`SchemaConverter`), with four fixes:
- its string character rule admits raw control characters, which strict JSON parsers reject;
  the rule here excludes them, as llama.cpp's upstream converter does;
- a list of types (`["integer", "null"]`) loses the other keywords there: it becomes an anyOf;
- it ignores numeric bounds (`minimum`, `maximum`, exclusive ones); here an integer range of up to
  1000 values, a non-negative or positive integer, and a non-negative number are written into the
  grammar, and any other bound is refused rather than left unenforced;
- a literal `prefix` (the call marker) may come before the JSON.
Runs in the HTTP process (cached per schema), so a schema it cannot handle is refused before the
answer starts, and the engine worker's decode loop does no conversion work.
"""

from __future__ import annotations

import functools
import json
import math

from qfserve.engine.base import Constraint

_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def _literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
MAX_ENUMERATED = 1000
DIGITS = "[0-9] [0-9]? [0-9]? [0-9]? [0-9]? [0-9]? [0-9]? [0-9]? [0-9]? [0-9]? [0-9]? [0-9]? [0-9]? [0-9]? [0-9]?"


def _bound(schema: dict, key: str) -> float | None:
    value = schema.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key} must be a number")  # draft-4 boolean exclusives are not supported
    return value


def numeric_rule(schema: dict) -> str:
    """A GBNF body for an integer or number with bounds, or ValueError when not expressible."""
    low, high = _bound(schema, "minimum"), _bound(schema, "maximum")
    low_x, high_x = _bound(schema, "exclusiveMinimum"), _bound(schema, "exclusiveMaximum")
    if schema.get("type") == "integer":
        candidates_low = [math.ceil(low)] if low is not None else []
        candidates_low += [math.floor(low_x) + 1] if low_x is not None else []
        candidates_high = [math.floor(high)] if high is not None else []
        candidates_high += [math.ceil(high_x) - 1] if high_x is not None else []
        first = max(candidates_low) if candidates_low else None
        last = min(candidates_high) if candidates_high else None
        if first is not None and last is not None and last - first < MAX_ENUMERATED:
            if last < first:
                raise ValueError("the integer range is empty")
            return "(" + " | ".join(f'"{value}"' for value in range(first, last + 1)) + ") space"
        if last is None and first == 0:
            return f'("0" | [1-9] {DIGITS[6:]}) space'
        if last is None and first == 1:
            return f"[1-9] {DIGITS[6:]} space"
        raise ValueError("integer bounds other than a range of up to 1000 values, >= 0 or >= 1")
    if low == 0 and high is None and low_x is None and high_x is None:
        return f'("0" | [1-9] {DIGITS[6:]}) ("." {DIGITS})? space'
    raise ValueError("number bounds other than minimum 0")


def _converter():
    from llama_cpp.llama_grammar import SchemaConverter

    class BoundedConverter(SchemaConverter):
        def visit(self, schema, name):
            if isinstance(schema, dict) and isinstance(schema.get("type"), list):
                # The base class keeps only `type` for each listed type, dropping every other keyword.
                alternatives = [{**schema, "type": kind} for kind in schema["type"]]
                rest = {k: v for k, v in schema.items() if k != "type"}
                return super().visit({**{k: v for k, v in rest.items() if k in ("description", "title")},
                                      "anyOf": alternatives}, name)
            if (isinstance(schema, dict) and schema.get("type") in ("integer", "number")
                    and any(key in schema for key in BOUNDS)):
                rule_name = name or "root"
                return self._add_rule(rule_name, numeric_rule(schema))
            return super().visit(schema, name)

    # No property order of our own: properties are written in the order the schema lists them.
    return BoundedConverter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def _json_schema_to_gbnf(json_schema: str) -> str:
    schema = json.loads(json_schema)
    converter = _converter()
    schema = converter.resolve_refs(schema, "stdin")
    converter.visit(schema, "")
    return converter.format_grammar()


@functools.lru_cache(maxsize=256)
def gbnf(json_schema: str, prefix: str = "") -> str:
    """The grammar for `prefix` followed by JSON valid against `json_schema` (JSON text).
    Raises ValueError when the schema cannot be converted."""
    try:
        grammar = _json_schema_to_gbnf(json_schema)
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


_accepted: set[str] = set()  # grammars llama.cpp parsed already (parsing does not depend on the vocabulary)


def check_grammar(vocab, grammar: str) -> None:
    """Raise ValueError unless llama.cpp itself accepts `grammar` (its parser is the judge)."""
    if grammar in _accepted:
        return
    from llama_cpp import llama_cpp as L

    sampler = L.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
    if not sampler:
        raise ValueError("unsupported JSON schema")
    L.llama_sampler_free(sampler)
    if len(_accepted) < 1024:
        _accepted.add(grammar)


def schema_text(schema: dict) -> str:
    # Key order kept: the grammar writes properties in the order the schema lists them.
    return json.dumps(schema, ensure_ascii=False)
