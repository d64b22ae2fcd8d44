"""What every protocol's routes depend on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request

from service.core.inference import InferenceCore

if TYPE_CHECKING:
    from service.api.openai.serving import OpenAIServing


# async, so FastAPI calls it on the event loop instead of handing each request to its thread pool.
async def get_core(request: Request) -> InferenceCore:
    return request.app.state.core


async def get_openai(request: Request) -> OpenAIServing:
    return request.app.state.openai


Core = Annotated[InferenceCore, Depends(get_core)]
