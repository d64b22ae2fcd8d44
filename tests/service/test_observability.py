"""Structured logs and OpenTelemetry traces with real parts: the server's JSON lines parse one by one,
and its spans reach an OTLP receiver here (HTTP and gRPC) that decodes them with OpenTelemetry's own
protobuf types; the test checks the trace ids, the span tree and the batch's links."""

from __future__ import annotations

import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.conftest import free_port

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class Collected:
    def __init__(self) -> None:
        self.spans: list = []
        self.lock = threading.Lock()

    def add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        with self.lock:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)


def http_receiver(collected: Collected) -> tuple[str, ThreadingHTTPServer]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            assert self.path == "/v1/traces" and self.headers["Content-Type"] == "application/x-protobuf"
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            collected.add(request)
            answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}", server


def grpc_receiver(collected: Collected):
    import grpc

    class Service(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):  # noqa: N802 (the proto's name)
            collected.add(request)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return f"http://127.0.0.1:{port}", server


def drive(url: str) -> None:
    """Two next-token requests that share a batch, one continuing the caller's trace; one stream."""
    traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
    body = {"texts": ["we do like"], "model": "toy"}
    with httpx.Client(timeout=30) as http:
        threads = [
            threading.Thread(target=http.post, args=(url + "/v1/next-token",), kwargs={"json": body, "headers": h})
            for h in ({"traceparent": traceparent}, {})
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stream = {"model": "toy", "prompt": "we do", "max_tokens": 4, "stream": True}
        assert http.post(url + "/v1/completions", json=stream).status_code == 200


def check_traces(spans: list) -> None:
    by_name: dict[str, list] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    requests = by_name["POST /v1/next-token"]
    assert len(requests) == 2
    continued = [s for s in requests if s.trace_id.hex() == CALLER_TRACE]
    assert len(continued) == 1 and continued[0].parent_span_id.hex() == CALLER_SPAN, "traceparent is continued"
    # Each request's span has a batch event at the start of its batch, with its wait; the batch's
    # inference links to the requests it served and starts where their events say.
    request_ids = {s.span_id for s in requests}
    linked = {link.span_id for s in by_name["inference"] for link in s.links}
    assert request_ids <= linked
    starts = {s.start_time_unix_nano for s in by_name["inference"]}
    for s in requests:
        (event,) = [e for e in s.events if e.name == "batch"]
        assert event.time_unix_nano in starts
        waited = {a.key: a.value for a in event.attributes}["attnserve.queue_wait_ms"].double_value
        assert 0 <= waited < (event.time_unix_nano - s.start_time_unix_nano) / 1e6
    # Generation: a span under the completion's request span, and the prefill (to the first token) under it.
    (completion,) = by_name["POST /v1/completions"]
    (generate,) = by_name["generate"]
    (prefill,) = by_name["prefill"]
    assert generate.parent_span_id == completion.span_id and prefill.parent_span_id == generate.span_id
    attributes = {a.key: a.value for a in generate.attributes}
    assert attributes["attnserve.generated_tokens"].int_value == 4
    assert prefill.end_time_unix_nano <= generate.end_time_unix_nano


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_traces_reach_an_otlp_receiver_with_the_span_tree_and_links(toy_bundle, server_factory, protocol):
    collected = Collected()
    endpoint, receiver = (http_receiver if protocol == "http/protobuf" else grpc_receiver)(collected)
    try:
        server = server_factory(
            toy_bundle,
            max_batch_delay_ms=20,
            otel_exporter_otlp_endpoint=endpoint,
            otel_exporter_otlp_protocol=protocol,
            otel_service_name="attnserve-test",
            otel_bsp_schedule_delay=100,
            log_format="json",
        )
        drive(server.url)
        server.stop()  # the shutdown sends the last spans
        check_traces(collected.spans)
        # Log lines of a traced request carry its trace and span ids.
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        access = [x for x in lines if x["logger"] == "attnserve.access" and x.get("trace_id") == CALLER_TRACE]
        assert access and access[0]["path"] == "/v1/next-token"
    finally:
        if protocol == "grpc":
            receiver.stop(0)
        else:
            receiver.shutdown()


def test_json_logs_parse_line_by_line_with_an_access_line_per_request(toy_bundle, server_factory):
    server = server_factory(toy_bundle, log_format="json")
    with httpx.Client(timeout=30) as http:
        http.post(server.url + "/v1/next-token", json={"texts": ["we do", "I do not"]}, headers={"X-Request-ID": "r-1"})
        http.post(server.url + "/v1/completions", json={"prompt": "we do", "max_tokens": 3, "stream": True})
        http.post(server.url + "/v1/next-token", json={"texts": []})  # a 422 is logged too
    server.stop()
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]  # every line is JSON
    assert any(x["logger"].startswith("uvicorn") for x in lines), "uvicorn's own records are JSON too"
    access = [x for x in lines if x["logger"] == "attnserve.access"]
    first = next(x for x in access if x["request_id"] == "r-1")
    assert first["status"] == 200 and first["model"] == "toy" and first["rows"] == 2 and first["duration_ms"] > 0
    generation = next(x for x in access if x["path"] == "/v1/completions")
    assert generation["tokens"] == 3 and 0 < generation["ttft_ms"] <= generation["duration_ms"]
    assert any(x["status"] == 422 for x in access)


def test_grpc_calls_continue_the_callers_traceparent_and_link_to_their_batch(toy_bundle, server_factory):
    import numpy as np
    import tritonclient.grpc as tg

    collected = Collected()
    endpoint, receiver = http_receiver(collected)
    try:
        port = free_port()
        server = server_factory(
            toy_bundle, grpc_port=port, otel_exporter_otlp_endpoint=endpoint, otel_bsp_schedule_delay=100
        )
        text = tg.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"we do like"], dtype=object))
        client = tg.InferenceServerClient(f"127.0.0.1:{port}")
        client.infer("toy", [text], headers={"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
        server.stop()  # the shutdown sends the last spans
    finally:
        receiver.shutdown()
    (call,) = [s for s in collected.spans if s.name == "inference.GRPCInferenceService/ModelInfer"]
    assert call.trace_id.hex() == CALLER_TRACE and call.parent_span_id.hex() == CALLER_SPAN
    assert [e.name for e in call.events] == ["batch"]
    assert call.span_id in {link.span_id for s in collected.spans if s.name == "inference" for link in s.links}


def test_a_request_the_sampler_drops_makes_no_span_and_a_sampled_caller_is_still_followed(toy_bundle, server_factory):
    """parentbased_traceidratio at 0: only the request whose caller's trace is sampled is traced, with its
    batch; the others (a next-token request and a streamed completion) make no span."""
    collected = Collected()
    endpoint, receiver = http_receiver(collected)
    try:
        server = server_factory(
            toy_bundle,
            max_batch_delay_ms=20,
            otel_exporter_otlp_endpoint=endpoint,
            otel_traces_sampler="parentbased_traceidratio",
            otel_traces_sampler_arg="0",
            otel_bsp_schedule_delay=100,
        )
        drive(server.url)
        server.stop()
    finally:
        receiver.shutdown()
    names = sorted(s.name for s in collected.spans)
    assert names == ["POST /v1/next-token", "inference"], names
    assert {s.trace_id.hex() for s in collected.spans if s.name != "inference"} == {CALLER_TRACE}
