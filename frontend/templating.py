"""The Hugging Face tokenizer as the frontend uses it: chat templating, /tokenize and /detokenize.

Every prompt is tokenized here and reaches Triton as token ids. Chat prompts must be, because only here is
it known which text the template wrote and which the client sent: a special token's text inside a message
(say "<|im_end|><|im_start|>system") must stay plain text, not become a control token that rewrites the
conversation. Raw completions prompts parse special tokens: their caller writes the control tokens on
purpose.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from frontend.legacy_functions import as_tool_messages
from frontend.protocol.chat import ChatMessage, ChatTool

logger = logging.getLogger(__name__)


class TemplateError(ValueError):
    """The chat template could not render these messages (a client error: bad roles, order, kwargs)."""


def message_dict(message: ChatMessage) -> dict[str, Any]:
    """The plain dict chat templates expect: text content as one string, tool-call arguments as objects."""
    # Templates written before the `developer` role exist only know `system`.
    role = "system" if message.role == "developer" else message.role
    rendered: dict[str, Any] = {"role": role, "content": message.text()}
    if message.name is not None:
        rendered["name"] = message.name
    if message.tool_call_id is not None:
        rendered["tool_call_id"] = message.tool_call_id
    if message.reasoning_content is not None:
        rendered["reasoning_content"] = message.reasoning_content
    if message.tool_calls:
        rendered["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": _arguments(call.function.arguments)},
            }
            for call in message.tool_calls
        ]
    return rendered


def _arguments(text: str) -> Any:
    # Hermes/Llama/Qwen templates serialize `arguments | tojson`: hand them an object, not a JSON string.
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@dataclass
class ChatPrompt:
    """A templated chat prompt: its text, and its token ids with client text never read as control tokens."""

    text: str
    token_ids: list[int]


class ChatTemplater:
    """Renders chat prompts and converts between text and token ids with the model's own tokenizer."""

    def __init__(self, model_path: Path, chat_template_file: Path | None = None) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.default_template: str | None = (
            chat_template_file.read_text() if chat_template_file is not None else None
        )
        # Longest first, so a special token that contains another is found whole.
        self.special_tokens = sorted(
            {token.content for token in self.tokenizer.added_tokens_decoder.values() if token.special},
            key=len,
            reverse=True,
        )

    def render(
        self,
        messages: list[ChatMessage],
        tools: list[ChatTool] | None = None,
        add_generation_prompt: bool = True,
        continue_final_message: bool = False,
        chat_template: str | None = None,
        chat_template_kwargs: dict[str, Any] | None = None,
    ) -> ChatPrompt:
        template = chat_template or self.default_template
        if template is None and self.tokenizer.chat_template is None:
            raise TemplateError("this model has no chat template; start the server with --chat-template")
        # Special-token text in client content is swapped for placeholders no client can forge (a fresh
        # nonce), the template renders around them, and each placeholder is tokenized as plain text.
        # Legacy function calls and results render as the tool calls and tool messages templates know.
        nonce = uuid.uuid4().hex
        shielded = [self._shield(message_dict(message), nonce) for message in as_tool_messages(messages)]
        try:
            rendered = self.tokenizer.apply_chat_template(
                shielded,
                tools=[tool.model_dump(exclude_none=True) for tool in tools] if tools else None,
                chat_template=template,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                tokenize=False,
                **dict(chat_template_kwargs or {}),
            )
        except Exception as error:  # jinja2 raises many types; every one means these messages do not render
            raise TemplateError(f"chat template failed: {error}") from None
        text, token_ids = [], []
        for index, piece in enumerate(re.split(f"\ue000{nonce}:(\\d+)\ue001", str(rendered))):
            if index % 2 == 0:
                text.append(piece)
                token_ids += self.encode(piece, add_special_tokens=False)
            else:
                special = self.special_tokens[int(piece)]
                text.append(special)
                token_ids += self.tokenizer.encode(
                    special, add_special_tokens=False, split_special_tokens=True
                )
        return ChatPrompt("".join(text), token_ids)

    def _shield(self, message: dict[str, Any], nonce: str) -> dict[str, Any]:
        content = message["content"]
        if any(special in content for special in self.special_tokens):
            for number, special in enumerate(self.special_tokens):
                content = content.replace(special, f"\ue000{nonce}:{number}\ue001")
            message["content"] = content
        return message

    def with_special_tokens(self, token_ids: list[int]) -> list[int]:
        """`token_ids` framed by the special tokens the tokenizer adds around any text (a BOS for Llama's,
        none for Qwen's): what vLLM's chat `add_special_tokens` does, without re-reading the text."""
        prefix, suffix = self._special_frame
        return prefix + token_ids + suffix

    @cached_property
    def _special_frame(self) -> tuple[list[int], list[int]]:
        probe = "Hello"
        plain = self.encode(probe, add_special_tokens=False)
        framed = self.encode(probe, add_special_tokens=True)
        for start in range(len(framed) - len(plain) + 1):
            if framed[start : start + len(plain)] == plain:
                return framed[:start], framed[start + len(plain) :]
        # A tokenizer whose special tokens change how the text itself reads has no frame to add.
        logger.warning(
            "add_special_tokens has no effect on chat prompts: this tokenizer's special tokens do not frame the text"
        )
        return [], []

    def encode(self, text: str, add_special_tokens: bool) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens).input_ids)

    def encode_pair(self, text: str, text_pair: str) -> list[int]:
        """Two texts as one input, as the tokenizer joins a pair (a BERT-style [SEP] between them, or none),
        special tokens included: a cross-encoder's input, as vLLM tokenizes it."""
        return list(self.tokenizer(text, text_pair, add_special_tokens=True).input_ids)

    def decode(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids))

    def token_strings(self, token_ids: list[int]) -> list[str]:
        return [str(token) for token in self.tokenizer.convert_ids_to_tokens(token_ids)]

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)
