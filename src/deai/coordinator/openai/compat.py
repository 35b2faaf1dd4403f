"""Request bodies under /v1 checked in OpenAI's words, every refusal naming its parameter.

``parse`` validates a JSON body against a model of ``schemas`` and turns the
first problem into the message OpenAI itself would give::

    Missing required parameter: 'messages'.                      missing_required_parameter
    Unrecognized request argument supplied: foo                   unknown_parameter
    Invalid type for 'temperature': expected a number, but got a string instead.
                                                                   invalid_type
    Invalid 'messages': empty array. Expected an array with minimum length 1, ...
                                                                   empty_array

``check_chat`` refuses what DeAI's chat models cannot do, as OpenAI refuses
what a model does not support (``unsupported_parameter`` or
``unsupported_value``, ``param`` set): tools and functions, ``json_schema``,
logit biases, non-zero penalties, non-text content, tool messages. Values out
of range (``n``, ``top_logprobs``, ``stop``) are the chat kind's own checks
(``core.kinds.chat``), which the gateway reports with the parameter's name.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from deai.coordinator.openai import schemas as S
from deai.coordinator.openai.errors import ApiError

M = TypeVar("M", bound=BaseModel)

_TYPE_WORDS = {"string": "a string", "int": "an integer", "float": "a number",
               "bool": "a boolean", "dict": "an object", "list": "an array",
               "model": "an object", "none": "null"}
_LOC_TYPES = ("str", "int", "float", "bool", "dict", "list", "none")
ROLES = ("system", "developer", "user", "assistant")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _param(loc: tuple[Any, ...]) -> str:
    """``('messages', 0, 'content', 'str')`` -> ``messages[0].content``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "[" in str(part) or str(part) in _LOC_TYPES:
            continue  # a union member's tag, not a field
        else:
            out += ("." if out else "") + str(part)
    return out


def _expected(etype: str) -> str:
    for word, phrase in _TYPE_WORDS.items():
        if etype.startswith(word):
            return phrase
    return "another type"


def _error(err: dict[str, Any]) -> ApiError:
    param = _param(tuple(err.get("loc", ())))
    etype = str(err.get("type", ""))
    value = err.get("input")
    if etype == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.",
                        code="missing_required_parameter", param=param)
    if etype == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}",
                        code="unknown_parameter", param=param)
    if etype == "too_short" and isinstance(value, list) and not value:
        return ApiError(400, f"Invalid '{param}': empty array. Expected an array with minimum "
                             "length 1, but got an empty array instead.",
                        code="empty_array", param=param)
    if etype in ("greater_than_equal", "greater_than", "less_than_equal", "less_than",
                 "too_long", "too_short", "string_too_long", "string_too_short"):
        return ApiError(400, f"Invalid value for '{param}': {err.get('msg', '')}.",
                        code="invalid_value", param=param)
    if etype.endswith("_type") or etype.endswith("_parsing") or etype in (
            "model_attributes_type", "literal_error", "bool_parsing"):
        return ApiError(400, f"Invalid type for '{param}': expected {_expected(etype)}, but "
                             f"got {_json_type(value)} instead.",
                        code="invalid_type", param=param)
    return ApiError(400, f"Invalid value for '{param}': {err.get('msg', 'invalid')}.",
                    code="invalid_value", param=param or None)


def parse(model: type[M], raw: Any) -> M:
    """``raw`` (a decoded JSON body) as ``model``, or the first problem in OpenAI's words."""
    if not isinstance(raw, dict):
        raise ApiError(400, "Invalid type for the request body: expected an object, but got "
                            f"{_json_type(raw)} instead.", code="invalid_type")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        # A union reports every member; the member whose problem is deepest says it best.
        errors.sort(key=lambda e: -len([p for p in e.get("loc", ()) if not (
            isinstance(p, str) and ("[" in p or p in _LOC_TYPES))]))
        raise _error(dict(errors[0])) from None


def _unsupported_param(param: str, why: str) -> ApiError:
    return ApiError(400, f"Unsupported parameter: '{param}' is not supported with this "
                         f"model. {why}", code="unsupported_parameter", param=param)


def _unsupported_value(param: str, value: Any, why: str) -> ApiError:
    return ApiError(400, f"Unsupported value: '{param}' does not support {value!r} with this "
                         f"model. {why}", code="unsupported_value", param=param)


NO_TOOLS = ("DeAI's chat models (SmolLM2-135M-Instruct) cannot call tools or functions "
            "reliably, so DeAI does not offer them; send the request without them.")


def check_chat(body: S.ChatIn) -> None:  # noqa: C901 - one refusal per parameter
    """Refuse, naming the parameter, what DeAI's chat models cannot do faithfully."""
    for name in ("tools", "functions"):
        if getattr(body, name):
            raise _unsupported_param(name, NO_TOOLS)
    if body.tool_choice not in (None, "none", "auto"):
        raise _unsupported_value("tool_choice", body.tool_choice, NO_TOOLS)
    if body.function_call not in (None, "none", "auto"):
        raise _unsupported_value("function_call", body.function_call, NO_TOOLS)
    if body.logit_bias:
        raise _unsupported_param("logit_bias", "Send the request without it.")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        if value not in (None, 0, 0.0):
            raise _unsupported_value(name, value, "Only the default (0) value is supported.")
    rf = body.response_format
    if rf is not None and rf.type not in ("text", "json_object"):
        raise _unsupported_value("response_format.type", rf.type,
                                 "Supported values are: 'text' and 'json_object'.")
    if rf is not None and rf.json_schema is not None:
        raise _unsupported_param("response_format.json_schema",
                                 "Use {'type': 'json_object'} for JSON output.")
    if body.stream_options is not None and not body.stream:  # as OpenAI answers it
        raise ApiError(400, "The 'stream_options' parameter is only allowed when 'stream' "
                            "is enabled.", code="invalid_value", param="stream_options")
    if body.top_logprobs is not None and not body.logprobs:
        raise ApiError(400, "Invalid value for 'top_logprobs': 'logprobs' must be set to true "
                            "when 'top_logprobs' is used.", code="invalid_value",
                       param="top_logprobs")
    for i, m in enumerate(body.messages):
        at = f"messages[{i}]"
        if m.role not in ROLES:
            if m.role in ("tool", "function"):
                raise _unsupported_value(f"{at}.role", m.role, NO_TOOLS)
            raise ApiError(400, f"Invalid value: {m.role!r}. Supported values are: "
                                + ", ".join(f"'{r}'" for r in ROLES) + ".",
                           code="invalid_value", param=f"{at}.role")
        if m.tool_calls or m.function_call is not None or m.tool_call_id is not None:
            field = "tool_calls" if m.tool_calls else (
                "function_call" if m.function_call is not None else "tool_call_id")
            raise _unsupported_param(f"{at}.{field}", NO_TOOLS)
        if m.audio is not None:
            raise _unsupported_param(f"{at}.audio", "DeAI's chat models read text only.")
        if m.content is None:
            raise ApiError(400, f"Invalid value for '{at}.content': expected a string or an "
                                "array of text parts, but got null instead.",
                           code="invalid_value", param=f"{at}.content")
        if isinstance(m.content, list):
            for j, part in enumerate(m.content):
                if part.type != "text" or part.text is None:
                    raise _unsupported_value(f"{at}.content[{j}].type", part.type,
                                             "DeAI's chat models read text parts only.")
