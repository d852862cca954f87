"""The references the simulator is checked against: the SDK's pydantic models, and the AsyncAPI definition.

* :func:`sdk_errors` checks a JSON value against one of the official SDK's
  models (``elevenlabs/types``, generated from the platform's API definition)
  more strictly than pydantic does: every required field present, no field the
  model does not know, and Fern's open enums (``Union[Literal[...], Any]``)
  held to their listed values, so ``"phone"`` is not a valid initiation source.
* :data:`ASYNCAPI_EVENTS` transcribes the server-to-client messages of the agent
  socket from the platform's AsyncAPI definition (repository
  ``elevenlabs/packages``, ``packages/types/schemas/agent.asyncapi.yaml``, commit
  2a9057ee of 2026-08-22) as pydantic models that forbid unknown fields;
  :func:`asyncapi_errors` checks one frame against them.

"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field


__all__ = ["ASYNCAPI_EVENTS", "asyncapi_errors", "sdk_errors"]


# -- the SDK's models, strictly ------------------------------------------------------------


def sdk_errors(annotation: Any, value: Any, path: str = "$") -> list[str]:
    """Return what is wrong with ``value`` as an instance of ``annotation`` (an SDK model or type); [] if nothing."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return []
    if origin is typing.Annotated:
        return sdk_errors(typing.get_args(annotation)[0], value, path)
    if origin is typing.Union or origin is types.UnionType:
        return _union_errors(typing.get_args(annotation), value, path)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        return [] if value in allowed else [f"{path}: {value!r} is not one of {allowed}"]
    if origin is list:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        (item,) = typing.get_args(annotation)
        return [error for i, v in enumerate(value) for error in sdk_errors(item, v, f"{path}[{i}]")]
    if origin is dict:
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {type(value).__name__}"]
        _, item = typing.get_args(annotation)
        return [error for k, v in value.items() for error in sdk_errors(item, v, f"{path}.{k}")]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model_errors(annotation, value, path)
    return _scalar_errors(annotation, value, path)


def _union_errors(options: tuple[Any, ...], value: Any, path: str) -> list[str]:
    if value is None and type(None) in options:
        return []
    options = tuple(option for option in options if option is not type(None))
    literals = [option for option in options if typing.get_origin(option) is Literal]
    if literals and Any in options:  # a Fern open enum: only the listed values count
        allowed = tuple(v for literal in literals for v in typing.get_args(literal))
        return [] if value in allowed else [f"{path}: {value!r} is not one of {allowed}"]
    best: list[str] | None = None
    for option in options:
        errors = sdk_errors(option, value, path)
        if not errors:
            return []
        if best is None or len(errors) < len(best):
            best = errors
    return best or [f"{path}: no option of the union fits {value!r}"]


def _model_errors(model: type[BaseModel], value: Any, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: expected an object ({model.__name__}), got {type(value).__name__}"]
    fields = {(info.alias or name): info for name, info in model.model_fields.items()}
    errors = [f"{path}.{key}: not a field of {model.__name__}" for key in value if key not in fields]
    for key, info in fields.items():
        if key not in value:
            if info.is_required():
                errors.append(f"{path}.{key}: required by {model.__name__}, missing")
            continue
        errors += sdk_errors(info.annotation, value[key], f"{path}.{key}")
    return errors


def _scalar_errors(annotation: Any, value: Any, path: str) -> list[str]:
    if annotation is bool:
        ok = isinstance(value, bool)
    elif annotation is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif annotation is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif annotation is str:
        ok = isinstance(value, str)
    else:
        try:
            pydantic.TypeAdapter(annotation).validate_python(value)
        except pydantic.ValidationError as exc:
            return [f"{path}: {exc.errors()[0]['msg']}"]
        return []
    return [] if ok else [f"{path}: expected {annotation.__name__}, got {value!r}"]


# -- the agent socket's AsyncAPI definition -------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _AudioAlignment(_Strict):
    chars: list[str]
    char_start_times_ms: list[int]
    char_durations_ms: list[int]


class _AudioEvent(_Strict):
    audio_base_64: str
    event_id: int
    alignment: _AudioAlignment | None = None


class _Transcription(_Strict):
    user_transcript: str
    event_id: int


class _AgentResponse(_Strict):
    agent_response: str
    event_id: int


class _Correction(_Strict):
    original_agent_response: str
    corrected_agent_response: str
    event_id: int


class _ChatPart(_Strict):
    text: str
    type: Literal["start", "delta", "stop"]
    event_id: int


class _ReasoningPart(_Strict):
    text: str
    type: Literal["start", "delta", "stop"]
    event_id: str  # a string, unlike every other event id


class _EventId(_Strict):
    event_id: int


class _Metadata(_Strict):
    conversation_id: str
    agent_output_audio_format: Literal[
        "pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "pcm_48000", "ulaw_8000"
    ]
    user_input_audio_format: Literal[
        "pcm_8000", "pcm_16000", "pcm_22050", "pcm_24000", "pcm_44100", "pcm_48000", "ulaw_8000"
    ]


class _ClientToolCall(_Strict):
    tool_name: str
    tool_call_id: str
    parameters: dict[str, Any]
    event_id: int


class _RichContent(_Strict):
    rich_content_id: str
    component: str
    props: dict[str, Any]
    event_id: int


class _ToolRequest(_Strict):
    tool_name: str
    tool_call_id: str
    tool_type: str
    event_id: int


class _ToolResponse(_Strict):
    tool_name: str
    tool_call_id: str
    tool_type: str
    is_error: bool
    is_called: bool
    event_id: int


class _ToolResponseFull(_ToolResponse):
    is_blocked: bool = False
    full_tool_result: str
    truncated: bool = False


class _McpToolCall(_Strict):
    service_id: str
    tool_call_id: str
    tool_name: str
    tool_description: str | None = None
    parameters: dict[str, Any]
    timestamp: str  # ISO 8601
    state: Literal["loading", "awaiting_approval", "success", "failure"]
    approval_timeout_secs: int | None = None  # required for awaiting_approval
    result: list[dict[str, Any]] | None = None  # required for success
    error_message: str | None = None  # required for failure

    @pydantic.model_validator(mode="after")
    def _state_fields(self) -> _McpToolCall:
        required = {
            "awaiting_approval": "approval_timeout_secs",
            "success": "result",
            "failure": "error_message",
        }
        field = required.get(self.state)
        if field is not None and getattr(self, field) is None:
            raise ValueError(f"state {self.state} needs {field}")
        others = set(required.values()) - {field}
        if any(name in self.model_fields_set for name in others):
            raise ValueError(f"state {self.state} takes none of {sorted(others)}")
        return self


class _McpIntegration(_Strict):
    integration_id: str
    integration_type: Literal["mcp_server", "mcp_integration"]
    is_connected: bool
    tool_count: int


class _McpStatus(_Strict):
    integrations: list[_McpIntegration]


class _VadScore(_Strict):
    vad_score: float = Field(ge=0, le=1, strict=False)


class _Ping(_Strict):
    event_id: int
    ping_ms: int | None = None


class _ContextUsage(_Strict):
    event_id: int
    model: str
    context_tokens: int
    context_limit_tokens: int


class _TurnProbability(_Strict):
    turn_probability: float = Field(ge=0, le=1, strict=False)


class _TentativeAgentResponse(_Strict):
    tentative_agent_response: str


class _AgentTyping(_Strict):
    is_typing: bool
    duration_ms: int | None = None


class _Error(_Strict):
    code: Literal[1000, 1002, 1008, 1011]
    message: str | None = None
    error_type: str | None = None
    reason: str | None = None
    debug_message: str | None = None
    details: dict[str, Any] | None = None


def _event(kind: str, **fields: Any) -> type[BaseModel]:
    """A frame model: ``type`` fixed to ``kind`` plus the given ``name=(annotation, default)`` fields."""
    literal: Any = Literal[kind]
    return pydantic.create_model(f"Frame_{kind}", __base__=_Strict, type=(literal, ...), **fields)


ASYNCAPI_EVENTS: dict[str, type[BaseModel]] = {
    "audio": _event("audio", audio_event=(_AudioEvent, ...)),
    "user_transcript": _event("user_transcript", user_transcription_event=(_Transcription, ...)),
    "tentative_user_transcript": _event(
        "tentative_user_transcript", tentative_user_transcription_event=(_Transcription, ...)
    ),
    "agent_response": _event("agent_response", agent_response_event=(_AgentResponse, ...)),
    "agent_response_correction": _event(
        "agent_response_correction", agent_response_correction_event=(_Correction, ...)
    ),
    "agent_chat_response_part": _event("agent_chat_response_part", text_response_part=(_ChatPart, ...)),
    "agent_reasoning_response_part": _event(
        "agent_reasoning_response_part", reasoning_response_part=(_ReasoningPart, ...)
    ),
    "interruption": _event("interruption", interruption_event=(_EventId, ...)),
    "conversation_initiation_metadata": _event(
        "conversation_initiation_metadata", conversation_initiation_metadata_event=(_Metadata, ...)
    ),
    "client_tool_call": _event("client_tool_call", client_tool_call=(_ClientToolCall, ...)),
    "rich_content": _event("rich_content", rich_content=(_RichContent, ...)),
    "agent_tool_request": _event("agent_tool_request", agent_tool_request=(_ToolRequest, ...)),
    "agent_tool_response": _event("agent_tool_response", agent_tool_response=(_ToolResponse, ...)),
    "agent_tool_response_full_payload": _event(
        "agent_tool_response_full_payload", agent_tool_response_full_payload=(_ToolResponseFull, ...)
    ),
    "mcp_tool_call": _event("mcp_tool_call", mcp_tool_call=(_McpToolCall, ...)),
    "mcp_connection_status": _event("mcp_connection_status", mcp_connection_status=(_McpStatus, ...)),
    "vad_score": _event("vad_score", vad_score_event=(_VadScore, ...)),
    "ping": _event("ping", ping_event=(_Ping, ...)),
    "context_usage": _event("context_usage", context_usage_event=(_ContextUsage, ...)),
    "asr_initiation_metadata": _event("asr_initiation_metadata", asr_initiation_metadata_event=(dict, ...)),
    "guardrail_triggered": _event("guardrail_triggered"),
    "internal_turn_probability": _event(
        "internal_turn_probability", turn_probability_internal_event=(_TurnProbability, ...)
    ),
    "internal_tentative_agent_response": _event(
        "internal_tentative_agent_response",
        tentative_agent_response_internal_event=(_TentativeAgentResponse, ...),
    ),
    "agent_typing": _event("agent_typing", agent_typing_event=(_AgentTyping, ...)),
    "external_agent_connected": _event(
        "external_agent_connected", external_agent_connected_event=(dict, None)
    ),
    "external_agent_disconnected": _event(
        "external_agent_disconnected", external_agent_disconnected_event=(dict, None)
    ),
    "error": _event("error", error_event=(_Error, ...)),
}
"""Every server-to-client message of the AsyncAPI's ``AgentMessages`` channel, by ``type``."""


def asyncapi_errors(frame: dict[str, Any]) -> list[str]:
    """Return what is wrong with a server frame per the AsyncAPI definition; [] if nothing."""
    model = ASYNCAPI_EVENTS.get(frame.get("type"))  # type: ignore[arg-type]
    if model is None:
        return [f"{frame.get('type')!r} is not a server message of the AsyncAPI"]
    try:
        model.model_validate(frame)
    except pydantic.ValidationError as exc:
        return [f"{frame.get('type')}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return []
