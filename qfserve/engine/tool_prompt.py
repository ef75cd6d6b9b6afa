"""Function calling for models whose chat template has no tool syntax: the documented format.

The embedded engine's default model (SmolLM2) has no tool tokens, so qfserve writes the functions
into the prompt itself and reads a call back from a fixed syntax:

- The system turn ends with a function block: an instruction, then one line of JSON per function
  the answer may call (`{"name", "description", "parameters"}`; only the named one when forced).
- One example exchange per prompt shows the syntax: the function's own `examples` when the caller
  gave some, otherwise a synthetic one (its description as the question, placeholder arguments).
- A call is an answer that **starts with** `<tool_call>` followed by one JSON object
  `{"name": …, "arguments": {…}}`, and nothing after it. Text that does not start so is an answer.
- Earlier calls in the conversation (`function_call`, or `tool_calls`: one line each) are rendered
  the same way as assistant turns (their thoughts left out); a function's
  result becomes a user turn `<tool_response>{"name": …, "content": …}</tool_response>`.

The call's JSON is produced under a grammar built from `call_schema` (constrained decoding), so it
always parses and matches the function's schema. Pure Python: the HTTP process uses it to build
prompts and to read calls; the engine worker only sees the resulting grammar.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

from qfserve.engine.base import FunctionCallOut, FunctionDef, Tools

CALL_MARKER = "<tool_call>"
RESULT_OPEN, RESULT_CLOSE = "<tool_response>", "</tool_response>"

# Caps the grammar adds where a schema leaves a size open, so a small model that rambles inside a
# string still closes the call within max_output_tokens. A value within them is valid for the schema.
# They start here and shrink (not below the floors) until the longest value the capped schema allows
# fits in VALUE_BUDGET characters: caps multiply through nested arrays, and fixed ones let an event
# with 10 attendees of two 160-character strings run past 1024 tokens (seen in CI, the 135M model
# rambling digits into an e-mail address).
STRING_CAP = 160
ARRAY_CAP = 10
STRING_FLOOR = 16
ARRAY_FLOOR = 2
VALUE_BUDGET = 800
GUESSED_LENGTH = 40  # a value the schema bounds some other way (pattern, format, $ref, …)

INSTRUCTION = (
    "You can call functions. If the user's request matches a function's description, call it: "
    f"reply with {CALL_MARKER} and a JSON object with the function's name and arguments, and nothing "
    "else. Otherwise answer in plain text.\n\nFunctions:\n"
)


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def render_call(name: str, arguments: str) -> str:
    """A call as the model writes it. `arguments` is JSON text (kept as given when it does not parse)."""
    try:
        parsed = json.loads(arguments) if arguments else {}
    except ValueError:
        return f'{CALL_MARKER}{{"name": {_dumps(name)}, "arguments": {arguments}}}'
    return CALL_MARKER + _dumps({"name": name, "arguments": parsed})


def system_block(tools: Tools) -> str:
    """The instruction and the functions the answer may call (only the named one when forced)."""
    lines = []
    for function in tools.offered():
        lines.append(_dumps({"name": function.name, "description": function.description,
                             "parameters": json.loads(function.parameters)}))
    return INSTRUCTION + "\n".join(lines)


def system_prompt(system: str | None, tools: Tools) -> str:
    """The caller's system text (if any), then the function block."""
    block = system_block(tools)
    return f"{system}\n\n{block}" if system else block


def _placeholder(schema: Any) -> Any:
    """A stand-in value for the synthetic example: short, obviously not real data."""
    if not isinstance(schema, dict):
        return "..."
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return _placeholder(schema[key][0])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        return {name: _placeholder(properties.get(name)) for name in schema.get("required") or [] if name in properties}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return 1
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "..."


def example_turns(tools: Tools) -> list[dict]:
    """The example exchanges: the callers' own (every function's `examples`), or one synthetic."""
    given = [turn for function in tools.functions for exchange in function.examples for turn in exchange]
    if given:
        return render_messages(given)
    first = _example_function(tools)
    arguments = _dumps(_placeholder(json.loads(first.parameters)))
    question = (first.description or first.name.replace("_", " ")).rstrip(". ") + "."  # v2: description optional
    return [{"role": "user", "content": question},
            {"role": "assistant", "content": render_call(first.name, arguments)}]


def _example_function(tools: Tools) -> FunctionDef:
    return tools.offered()[0]


def render_messages(messages: list[dict]) -> list[dict]:
    """Conversation turns with calls and results written in the documented syntax, so any chat
    template (role + content) can render them."""
    turns = []
    for message in messages:
        role, content = message.get("role"), message.get("content") or ""
        calls = message.get("tool_calls") or ([message["function_call"]] if message.get("function_call") else [])
        if role == "assistant" and calls:
            # Only the calls: a call starts with the marker, so text before it would teach otherwise.
            text = "\n".join(render_call(c.get("name") or "", c.get("arguments") or "{}") for c in calls)
            turns.append({"role": "assistant", "content": text})
        elif role == "function":
            result = _dumps({"name": message.get("name") or "", "content": content})
            turns.append({"role": "user", "content": f"{RESULT_OPEN}{result}{RESULT_CLOSE}"})
        else:
            turns.append({"role": role, "content": content})
    return turns


# ---- the constraint ---------------------------------------------------------------------------

def bounded(schema: Any) -> Any:
    """A copy of `schema` whose open-ended strings and arrays get caps (see STRING_CAP), as large as
    VALUE_BUDGET allows. Sizes the schema sets itself are kept."""
    string_cap, array_cap = STRING_CAP, ARRAY_CAP
    while True:
        capped = _capped(schema, string_cap, array_cap)
        if longest(capped) <= VALUE_BUDGET or (string_cap, array_cap) == (STRING_FLOOR, ARRAY_FLOOR):
            return capped
        string_cap = max(STRING_FLOOR, string_cap * 3 // 4)
        array_cap = max(ARRAY_FLOOR, array_cap * 3 // 4)


@functools.lru_cache(maxsize=256)
def bounded_text(schema_json: str) -> str:
    """`bounded` from and to a schema's JSON text, cached: the search for caps (up to a few hundred
    µs for nested arrays) runs once per schema, not on every request that offers it."""
    return _dumps(bounded(json.loads(schema_json)))


def _capped(schema: Any, string_cap: int, array_cap: int) -> Any:
    schema = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                visit(item)
            return
        if not isinstance(node, dict):
            return
        kinds = _kinds(node)
        free = not any(key in node for key in ("enum", "const", "pattern", "format"))
        if "string" in kinds and free and "maxLength" not in node:
            node["maxLength"] = max(string_cap, node.get("minLength", 0))
        if "array" in kinds and "maxItems" not in node:
            node["maxItems"] = max(array_cap, node.get("minItems", 0))
        for value in node.values():
            visit(value)

    visit(schema)
    return schema


def _kinds(node: dict) -> list:
    kinds = node.get("type")
    return kinds if isinstance(kinds, list) else [kinds]


def longest(node: Any) -> int:
    """About the most characters a JSON value valid for `node` takes (an escape counts as one
    character); GUESSED_LENGTH where the schema bounds a value some other way."""
    if not isinstance(node, dict):
        return GUESSED_LENGTH
    if "const" in node:
        return len(_dumps(node["const"]))
    if "enum" in node:
        return max((len(_dumps(value)) for value in node["enum"]), default=0)
    alternatives = node.get("anyOf") or node.get("oneOf")
    if isinstance(alternatives, list):
        return max((longest(alt) for alt in alternatives), default=0)
    sizes = [_longest_of_kind(node, kind) for kind in _kinds(node)]
    return max(sizes, default=GUESSED_LENGTH)


def _longest_of_kind(node: dict, kind: Any) -> int:
    if kind == "string":
        return node["maxLength"] + 2 if "maxLength" in node else GUESSED_LENGTH
    if kind == "array":
        if "maxItems" not in node:
            return GUESSED_LENGTH
        return 2 + node["maxItems"] * (longest(node.get("items", {})) + 2)
    if kind == "object" or (kind is None and "properties" in node):
        properties = node.get("properties") or {}
        return 2 + sum(len(_dumps(key)) + 4 + longest(value) for key, value in properties.items())
    return {"boolean": 5, "null": 4, "integer": 20, "number": 24}.get(kind, GUESSED_LENGTH)


def _call_object(function: FunctionDef) -> dict:
    return {
        "type": "object",
        "properties": {"name": {"const": function.name}, "arguments": json.loads(bounded_text(function.parameters))},
        "required": ["name", "arguments"],
    }


def call_schema(tools: Tools) -> dict:
    """The JSON schema of a call's object: the named function's, or any offered one's."""
    functions = tools.offered()
    if len(functions) == 1:
        return _call_object(functions[0])
    return {"anyOf": [_call_object(f) for f in functions]}


# ---- reading a call back ----------------------------------------------------------------------

def parse_call(text: str, tools: Tools) -> FunctionCallOut | None:
    """The call in an answer that starts with the marker, or None when it is not a complete, valid
    call (an answer cut short by max_output_tokens, or not a call at all)."""
    if not text.startswith(CALL_MARKER):
        return None
    try:
        value = json.loads(text[len(CALL_MARKER):])
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("arguments"), dict):
        return None
    function = next((f for f in tools.offered() if f.name == value.get("name")), None)
    if function is None or not valid_arguments(value["arguments"], json.loads(function.parameters)):
        return None
    return FunctionCallOut(function.name, _dumps(value["arguments"]))


def valid_arguments(arguments: Any, schema: dict) -> bool:
    import jsonschema  # noqa: PLC0415 (import cost only where calls happen)

    validator = jsonschema.validators.validator_for(schema)(schema)
    return validator.is_valid(arguments)
