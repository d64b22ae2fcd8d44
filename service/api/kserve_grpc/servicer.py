"""inference.GRPCInferenceService (KServe v2 over gRPC; Triton's service.proto) over the same v2 core
as the HTTP routes (service/api/kserve): the same model names (`<model>.<job>`), parameters,
checks and batchers, so gRPC and HTTP rows of a job share batches.

What tritonclient.grpc calls for health, metadata, configuration, the repository, inference and
streams is here; the rest of Triton's service (shared memory, statistics, trace and log settings)
answers UNIMPLEMENTED, as the generated base class does. On a stream (ModelStreamInfer, Triton's
decoupled mode) `<model>.generate` answers one response per token, and every other model once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2_grpc
from tritonclient.grpc import service_pb2 as pb

from service.api.budget import reservation
from service.api.deps import LOG_KEY, not_ready
from service.api.kserve import generate
from service.api.kserve.codec import V2Error
from service.api.kserve.routes import check_control_mode
from service.api.kserve.serving import V2Serving
from service.api.kserve.v2model import MAX_INPUT_RANK
from service.api.kserve_grpc.rules import CallRules
from service.api.kserve_grpc.wire import infer_request, infer_response
from service.core.errors import ModelNotFoundError

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state: Any) -> None:
        self.state = state
        self.v2: V2Serving = state.kserve
        self.rules = CallRules(state)

    def _ready(self) -> bool:
        return not_ready(self.state) is None

    async def ServerLive(self, request: pb.ServerLiveRequest, ctx: Context) -> pb.ServerLiveResponse:
        async def answer(scope: dict[str, Any]) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self.rules.run("ServerLive", ctx, answer, probe=True)

    async def ServerReady(self, request: pb.ServerReadyRequest, ctx: Context) -> pb.ServerReadyResponse:
        async def answer(scope: dict[str, Any]) -> pb.ServerReadyResponse:
            return pb.ServerReadyResponse(ready=self._ready())

        return await self.rules.run("ServerReady", ctx, answer, probe=True)

    async def ModelReady(self, request: pb.ModelReadyRequest, ctx: Context) -> pb.ModelReadyResponse:
        async def answer(scope: dict[str, Any]) -> pb.ModelReadyResponse:
            try:  # an unknown model is not ready, as HTTP's 404 reads to tritonclient.http
                self.v2.target(scope, request.name, request.version or None)
            except ModelNotFoundError:
                return pb.ModelReadyResponse(ready=False)
            return pb.ModelReadyResponse(ready=self._ready())

        return await self.rules.run("ModelReady", ctx, answer)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, ctx: Context) -> pb.ServerMetadataResponse:
        async def answer(scope: dict[str, Any]) -> pb.ServerMetadataResponse:
            return pb.ServerMetadataResponse(**self.v2.server_metadata())

        return await self.rules.run("ServerMetadata", ctx, answer)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, ctx: Context) -> pb.ModelMetadataResponse:
        async def answer(scope: dict[str, Any]) -> pb.ModelMetadataResponse:
            meta = self.v2.model_metadata(self.v2.target(scope, request.name, request.version or None))
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=meta["name"],
                versions=meta["versions"],
                platform=meta["platform"],
                inputs=[tensor(**t) for t in meta["inputs"]],
                outputs=[tensor(**t) for t in meta["outputs"]],
            )

        return await self.rules.run("ModelMetadata", ctx, answer)

    async def ModelConfig(self, request: pb.ModelConfigRequest, ctx: Context) -> pb.ModelConfigResponse:
        async def answer(scope: dict[str, Any]) -> pb.ModelConfigResponse:
            config = self.v2.model_config(self.v2.target(scope, request.name, request.version or None))
            # The HTTP form is Triton's ModelConfig in JSON already; its description has no field there.
            parsed = json_format.ParseDict(config, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
            return pb.ModelConfigResponse(config=parsed)

        return await self.rules.run("ModelConfig", ctx, answer)

    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, ctx: Context) -> pb.RepositoryIndexResponse:
        async def answer(scope: dict[str, Any]) -> pb.RepositoryIndexResponse:
            index = pb.RepositoryIndexResponse.ModelIndex
            models = [
                index(name=m.name, version=m.version, state=str(m.state), reason=m.reason or "")
                for m in self.state.registry.index()
                if m.state == "READY" or not request.ready
            ]
            return pb.RepositoryIndexResponse(models=models)

        return await self.rules.run("RepositoryIndex", ctx, answer)

    async def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, ctx: Context
    ) -> pb.RepositoryModelLoadResponse:
        async def answer(scope: dict[str, Any]) -> pb.RepositoryModelLoadResponse:
            check_control_mode(self.state.settings, "load")
            await self.state.registry.load(request.model_name)
            return pb.RepositoryModelLoadResponse()

        return await self.rules.run("RepositoryModelLoad", ctx, answer, admin=True)

    async def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, ctx: Context
    ) -> pb.RepositoryModelUnloadResponse:
        async def answer(scope: dict[str, Any]) -> pb.RepositoryModelUnloadResponse:
            check_control_mode(self.state.settings, "unload")
            await self.state.registry.unload(request.model_name)
            return pb.RepositoryModelUnloadResponse()

        return await self.rules.run("RepositoryModelUnload", ctx, answer, admin=True)

    async def ModelInfer(self, request: pb.ModelInferRequest, ctx: Context) -> pb.ModelInferResponse:
        async def answer(scope: dict[str, Any]) -> pb.ModelInferResponse:
            target = self.v2.target(scope, request.model_name, request.model_version or None)
            parsed = infer_request(request, MAX_INPUT_RANK)
            outputs, _ = await self.v2.answer(target, parsed, reservation(scope), scope[LOG_KEY])
            return infer_response(target.name, target.version, parsed.header.id, outputs)

        return await self.rules.run("ModelInfer", ctx, answer, work=True)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[pb.ModelInferRequest], ctx: Context
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        async for response in self.rules.stream("ModelStreamInfer", ctx, requests, self._streamed, _stream_error):
            yield response

    async def _streamed(
        self, request: pb.ModelInferRequest, scope: dict[str, Any]
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        target = self.v2.target(scope, request.model_name, request.model_version or None)
        parsed = infer_request(request, MAX_INPUT_RANK)
        empty_final = parsed.header.parameters.get("triton_enable_empty_final_response") is True
        if target.job is not generate.MODEL:  # a model that is not decoupled: one response
            outputs, _ = await self.v2.answer(target, parsed, reservation(scope), scope[LOG_KEY])
            yield _final(infer_response(target.name, target.version, parsed.header.id, outputs))
            return
        rows, params = await self.v2.inputs(target, parsed)
        if len(rows) != 1:
            raise V2Error(f"a streamed generation takes one row (one prompt), not {len(rows)}: send one request each")
        scope[LOG_KEY]["rows"] = 1
        (stream,) = await generate.streams(target.model, rows, params)
        async for step in generate.each_step(stream):
            response = infer_response(target.name, target.version, parsed.header.id, generate.step_outputs([step]))
            last = step.finish_reason is not None and not empty_final
            response.parameters["triton_final_response"].bool_param = last
            yield pb.ModelStreamInferResponse(infer_response=response)
        if empty_final:  # what tritonclient asks for to know a decoupled answer has ended
            yield _final(pb.ModelInferResponse(model_name=target.name, model_version=target.version, id=request.id))


def _final(response: pb.ModelInferResponse) -> pb.ModelStreamInferResponse:
    response.parameters["triton_final_response"].bool_param = True
    return pb.ModelStreamInferResponse(infer_response=response)


def _stream_error(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    """A request of a stream that failed: its error, and the stream goes on (as Triton answers)."""
    response = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
    response.parameters["triton_final_response"].bool_param = True
    return pb.ModelStreamInferResponse(error_message=message, infer_response=response)
