"""vLLM's /tokenize and /detokenize, with the same tokenizer and chat template as generation."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from frontend.errors import bad_request
from frontend.protocol.chat import ChatMessage
from frontend.protocol.tokenize import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from frontend.serving.context import ServingContext
from frontend.templating import ChatTemplater, TemplateError


class ChatPrompt(Protocol):
    """A request's fields that say how its messages become a prompt (tokenize's, embeddings')."""

    messages: list[ChatMessage] | None
    add_generation_prompt: bool
    continue_final_message: bool
    chat_template: str | None
    chat_template_kwargs: dict[str, Any] | None
    add_special_tokens: bool | None


async def chat_token_ids(templater: ChatTemplater, request: ChatPrompt, tools: list[Any] | None) -> list[int]:
    """The token ids of the request's messages rendered with the chat template, as chat generation sends
    them with the same add_special_tokens; a template failure is a 400 naming `messages`."""
    try:
        prompt = await asyncio.to_thread(
            templater.render,
            request.messages or [],
            tools,
            request.add_generation_prompt,
            request.continue_final_message,
            request.chat_template,
            request.chat_template_kwargs,
        )
    except TemplateError as error:
        raise bad_request(str(error), param="messages") from None
    return templater.with_special_tokens(prompt.token_ids) if request.add_special_tokens else prompt.token_ids


class TokenizeHandler:
    def __init__(self, ctx: ServingContext) -> None:
        self.ctx = ctx

    async def tokenize(self, request: TokenizeRequest) -> TokenizeResponse:
        # An adapter shares the base model's tokenizer and chat template.
        await self.ctx.resolve_model(request.model)
        templater = self.ctx.templater
        if request.messages is not None:
            if request.continue_final_message and request.add_generation_prompt:
                raise bad_request(
                    "continue_final_message and add_generation_prompt cannot both be true",
                    "add_generation_prompt",
                )
            tokens = await chat_token_ids(templater, request, request.tools)
        else:
            tokens = await asyncio.to_thread(
                templater.encode, request.prompt or "", request.add_special_tokens is not False
            )
        return TokenizeResponse(
            count=len(tokens),
            max_model_len=await self.ctx.max_model_len(),
            tokens=tokens,
            token_strs=templater.token_strings(tokens) if request.return_token_strs else None,
        )

    async def detokenize(self, request: DetokenizeRequest) -> DetokenizeResponse:
        await self.ctx.resolve_model(request.model)
        vocab = self.ctx.templater.vocab_size
        if any(token < 0 or token >= vocab for token in request.tokens):
            raise bad_request(f"token ids must be in [0, {vocab})", param="tokens")
        return DetokenizeResponse(prompt=await asyncio.to_thread(self.ctx.templater.decode, request.tokens))
