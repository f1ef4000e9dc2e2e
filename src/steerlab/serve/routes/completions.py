"""``POST /v1/completions`` and ``POST /v1/chat/completions``: OpenAI completions and chat
completions, each with an optional ``steering`` list; one router each, one shared engine
(:func:`steerlab.serve.generation.generate`).

With ``"stream": true`` the answer comes as server-sent events (``text_completion`` or
``chat.completion.chunk`` chunks, then ``[DONE]``).

Example::

    curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' -d \
      '{"prompt": "Once upon a time", "max_tokens": 16, "steering": [{"vector": "happy", "coefficient": 4}]}'

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="secret")
    client.chat.completions.create(model="default", messages=[{"role": "user", "content": "Hi"}],
                                   extra_body={"steering": [{"vector": "happy", "coefficient": 4}]})
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from ..generation import generate
from ..schemas import ChatCompletionRequest, CompletionRequest
from ..state import ServerDep

COMPLETIONS_PATH = "/v1/completions"
CHAT_PATH = "/v1/chat/completions"
completions_router = APIRouter()
chat_router = APIRouter()


@completions_router.post(COMPLETIONS_PATH)
async def completions(req: CompletionRequest, request: Request, server: ServerDep) -> Response:
    """OpenAI completions, with optional ``steering``: one choice per prompt and ``n``."""
    return await generate(server, req, req.prompts, request, chat=False)


@chat_router.post(CHAT_PATH)
async def chat_completions(req: ChatCompletionRequest, request: Request, server: ServerDep) -> Response:
    """OpenAI chat completions, with optional ``steering``; the messages go through the chat template."""
    text = await run_in_threadpool(server.render_chat, req)  # a tokenizer call: off the event loop
    return await generate(server, req, [text], request, chat=True)
