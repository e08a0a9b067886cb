"""OpenAI's legacy function calling, served through the tools path.

Before tools, chat requests named `functions` and a `function_call` choice, answers carried one
`message.function_call` (finish_reason "function_call"), and results came back as `role: "function"`
messages. OpenAI still accepts them and older clients still send them; vLLM does not. Here a request's
functions become tools (one call per answer: parallel_tool_calls off), its history's function calls and
results become tool calls and tool messages paired by name, and the answer's first tool call is handed
back in the legacy shape.
"""

from __future__ import annotations

from frontend.errors import APIError, bad_request
from frontend.protocol.chat import (
    ChatCompletionRequest,
    ChatDelta,
    ChatMessage,
    ChatResponseMessage,
    ChatTool,
    NamedFunction,
    NamedToolChoice,
    ToolCall,
)

FUNCTION_CALL_FINISH_REASON = "function_call"
# The tools request fields the legacy ones became, and the legacy names a client of them sent.
LEGACY_NAMES = {"tool_choice": "function_call", "tools": "functions"}


def uses_functions(request: ChatCompletionRequest) -> bool:
    """The request asks with legacy functions (and is answered in their shape)."""
    return request.functions is not None or request.function_call is not None


def as_tools(request: ChatCompletionRequest) -> ChatCompletionRequest:
    """The same request asking with tools; refused when it mixes both kinds or names no functions."""
    if request.tools is not None or request.tool_choice is not None:
        sent = "functions" if request.functions is not None else "function_call"
        raise bad_request("give tools or the legacy functions, not both", param=sent)
    if request.functions is None:
        raise bad_request("function_call needs functions", param="function_call")
    choice = request.function_call
    return request.model_copy(
        update={
            "tools": [ChatTool(function=function) for function in request.functions],
            "tool_choice": NamedToolChoice(function=choice) if isinstance(choice, NamedFunction) else choice,
            "parallel_tool_calls": False,
            "functions": None,
            "function_call": None,
        }
    )


def in_legacy_terms(error: APIError) -> APIError:
    """An error about the tools a legacy request became, naming the fields the client sent."""
    message = error.message
    for tools_name, legacy_name in LEGACY_NAMES.items():
        message = message.replace(tools_name, legacy_name)
    param = LEGACY_NAMES.get(error.param or "", error.param)
    return APIError(error.status, message, error.type, param, error.code, error.headers)


def as_tool_messages(messages: list[ChatMessage]) -> list[ChatMessage]:
    """History with legacy function calls as tool calls, and each `function` result as the `tool` message
    answering the latest call of that name (templates know only tool calls and tool messages; a result
    with no call before it answers none, as a tool message without tool_call_id does)."""
    if not any(message.function_call is not None or message.role == "function" for message in messages):
        return messages
    converted = []
    latest_call: dict[str, str] = {}
    for position, message in enumerate(messages):
        if message.function_call is not None:
            call = ToolCall(id=f"legacy_call_{position}", function=message.function_call)
            latest_call[call.function.name] = call.id
            message = message.model_copy(update={"function_call": None, "tool_calls": [*(message.tool_calls or []), call]})
        elif message.role == "function":
            if not message.name:
                raise bad_request(f"messages[{position}]: a function message needs the function's name", "messages")
            message = message.model_copy(update={"role": "tool", "tool_call_id": latest_call.get(message.name)})
        converted.append(message)
    return converted


def legacy_message(message: ChatResponseMessage) -> ChatResponseMessage:
    """An answer's first tool call as its function_call."""
    if not message.tool_calls:
        return message
    return message.model_copy(update={"tool_calls": None, "function_call": message.tool_calls[0].function})


def legacy_delta(delta: ChatDelta) -> ChatDelta:
    """A streamed delta's pieces of the first tool call as function_call pieces."""
    if not delta.tool_calls:
        return delta
    pieces = [call.function for call in delta.tool_calls if call.index == 0]
    function_call = None
    if pieces:
        name = "".join(piece.name or "" for piece in pieces) or None
        arguments = "".join(piece.arguments or "" for piece in pieces) or None
        function_call = pieces[0].model_copy(update={"name": name, "arguments": arguments})
    return delta.model_copy(update={"tool_calls": None, "function_call": function_call})
