"""Function calling on the wire: the neutral request pieces, and v1's (ERNIE's) fields parsed into them.

v1 (Qianfan, ERNIE function calling):
- `functions`: `[{name, description, parameters, responses?, examples?}]`, `parameters` a JSON schema;
- `tool_choice`: `{"type": "function", "function": {"name": …}}` forces that function;
- an assistant message may carry `function_call: {name, arguments, thoughts?}` with empty content;
- a `function` message carries the function's `name` and its result as `content`.

v2 (OpenAI) maps onto the same pieces: `tools[].function` → `Function`, `tool_choice` auto / none /
required / named → `ToolChoice`, `tool_calls` (with ids) → `ToolCall`s, a `tool` message → role
`function` with the `name` of the call its `tool_call_id` names, `response_format` → `ResponseFormat`.

Error messages: Qianfan's own where known ("functions description can't be blank",
"function_call's name can't be blank", both 336003); the others follow their style (unconfirmed).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from qfserve.protocol.errors import Code, QianfanError, out_of_range

MSG_CALL_NAME_BLANK = "function_call's name can't be blank"
MSG_FUNCTION_NAME_BLANK = "functions name can't be blank"
MSG_FUNCTION_DESCRIPTION_BLANK = "functions description can't be blank"
MSG_FUNCTION_PARAMETERS_BLANK = "functions parameters can't be blank"
MSG_FUNCTION_PARAMETERS_OBJECT = "functions parameters type must be object"
MSG_FUNCTION_PARAMETERS_SCHEMA = "functions parameters is not a valid json schema"
MSG_FUNCTION_NAME_DUPLICATE = "functions name must be unique"
MSG_FUNCTION_MESSAGE_NAME_BLANK = "the name of function message can't be blank"
MSG_TOOL_CHOICE_TYPE = "tool_choice type must be function"
MSG_TOOL_CHOICE_NAME = "tool_choice function name must be one of functions"
MSG_TOOL_CHOICE_WITHOUT_FUNCTIONS = "tool_choice requires functions"
MSG_FUNCTION_UNSUPPORTED = "functions parameters is not supported"
MSG_FUNCTIONS_NOT_SERVED = "functions is not supported by this service"
MSG_RESPONSE_FORMAT_UNSUPPORTED = "response_format json_schema is not supported: the schema cannot be enforced"


class Function(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    description: str
    parameters: dict
    responses: dict | None = None
    examples: tuple[tuple[dict, ...], ...] = ()  # example exchanges, each a list of messages


class ToolCall(BaseModel):
    """A call an earlier assistant turn made (v1 `function_call`, v2 `tool_calls[i]`)."""

    model_config = ConfigDict(frozen=True)
    name: str
    arguments: str
    thoughts: str = ""
    id: str | None = None  # v2 only


class ToolChoice(BaseModel):
    model_config = ConfigDict(frozen=True)
    mode: Literal["auto", "none", "required", "function"] = "auto"
    name: str | None = None  # with mode "function"


class ResponseFormat(BaseModel):
    """v2 `response_format`: JSON output, constrained like a call's arguments."""

    model_config = ConfigDict(frozen=True)
    type: Literal["text", "json_object", "json_schema"] = "text"
    json_schema: dict | None = None  # with type json_schema: the schema itself
    strict: bool = False


def _invalid() -> QianfanError:
    return QianfanError(Code.INVALID_ARGUMENT)


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def check_schema(schema: dict) -> None:
    """Raise 336003 unless `schema` is a JSON schema whose top level is an object."""
    import jsonschema

    if schema.get("type", "object") != "object":
        raise out_of_range(MSG_FUNCTION_PARAMETERS_OBJECT)
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError:
        raise out_of_range(MSG_FUNCTION_PARAMETERS_SCHEMA) from None


def parse_functions(raw: Any) -> tuple[Function, ...]:
    """v1 `functions`. `null` and `[]` mean none."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _invalid()
    functions = []
    for item in raw:
        if not isinstance(item, dict):
            raise _invalid()
        name, description, parameters = item.get("name"), item.get("description"), item.get("parameters")
        for value in (name, description):
            if value is not None and not isinstance(value, str):
                raise _invalid()
        if _blank(name):
            raise out_of_range(MSG_FUNCTION_NAME_BLANK)
        if _blank(description):
            raise out_of_range(MSG_FUNCTION_DESCRIPTION_BLANK)
        if parameters is None:
            raise out_of_range(MSG_FUNCTION_PARAMETERS_BLANK)
        if not isinstance(parameters, dict):
            raise _invalid()
        check_schema(parameters)
        responses, examples = item.get("responses"), item.get("examples")
        if responses is not None and not isinstance(responses, dict):
            raise _invalid()
        functions.append(Function(name=name, description=description, parameters=parameters,
                                  responses=responses, examples=_parse_examples(examples)))
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise out_of_range(MSG_FUNCTION_NAME_DUPLICATE)
    return tuple(functions)


def _parse_examples(raw: Any) -> tuple[tuple[dict, ...], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(e, list) for e in raw):
        raise _invalid()
    exchanges = []
    for exchange in raw:
        turns = []
        for message in exchange:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise _invalid()
            turns.append(message)
        exchanges.append(tuple(turns))
    return tuple(exchanges)


def parse_tool_choice(raw: Any, functions: tuple[Function, ...]) -> ToolChoice | None:
    """v1 `tool_choice`: `{"type": "function", "function": {"name": …}}`."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _invalid()
    if raw.get("type") != "function":
        raise out_of_range(MSG_TOOL_CHOICE_TYPE)
    function = raw.get("function")
    if not isinstance(function, dict) or (function.get("name") is not None and not isinstance(function.get("name"), str)):
        raise _invalid()
    if not functions:
        raise out_of_range(MSG_TOOL_CHOICE_WITHOUT_FUNCTIONS)
    if function.get("name") not in {f.name for f in functions}:
        raise out_of_range(MSG_TOOL_CHOICE_NAME)
    return ToolChoice(mode="function", name=function["name"])


def parse_function_call(raw: Any) -> ToolCall:
    """An assistant message's v1 `function_call`."""
    if not isinstance(raw, dict):
        raise _invalid()
    name, arguments, thoughts = raw.get("name"), raw.get("arguments"), raw.get("thoughts")
    if name is not None and not isinstance(name, str):
        raise _invalid()
    if _blank(name):
        raise out_of_range(MSG_CALL_NAME_BLANK)
    if arguments is not None and not isinstance(arguments, str):
        raise _invalid()
    if thoughts is not None and not isinstance(thoughts, str):
        raise _invalid()
    return ToolCall(name=name, arguments=arguments or "{}", thoughts=thoughts or "")


def parse_function_message_name(raw: Any) -> str:
    """The `name` a `function` message must carry: the function whose result it is."""
    if raw is not None and not isinstance(raw, str):
        raise _invalid()
    if _blank(raw):
        raise out_of_range(MSG_FUNCTION_MESSAGE_NAME_BLANK)
    return raw
