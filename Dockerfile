# attnserve serving image: the service, ONNX Runtime and the default bundle; no torch, no compilers.
#   GPU (default): docker build -t attnserve .
#   CPU only:      docker build -t attnserve:cpu --build-arg LOCK=requirements/image-cpu.txt .
ARG BASE_IMAGE=python:3.11-slim-bookworm

FROM ${BASE_IMAGE} AS deps
# The dependencies come from a lock file (exact versions, each file's hash), in a layer of their
# own: code changes do not reinstall them. The GPU lock's onnxruntime-gpu brings the CUDA and cuDNN
# libraries from pip, so a slim Python base works with the NVIDIA container runtime.
ARG LOCK=requirements/image-gpu.txt
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements/ /tmp/requirements/
RUN pip install --require-hashes --no-deps -r "/tmp/${LOCK}"

FROM deps AS loadtest
# The Locust image of the compose file's loadtest profile.
RUN pip install "locust>=2.30"
WORKDIR /app
COPY loadtest/ /app/loadtest/
ENTRYPOINT ["locust", "-f", "/app/loadtest/locustfile.py"]

FROM ${BASE_IMAGE} AS serve
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
COPY bundlespec/ /app/bundlespec/
COPY service/ /app/service/
COPY bundles/ /app/bundles/
RUN useradd --system --uid 10001 --no-create-home attnserve
USER 10001
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    GRPC_PORT=8001 \
    MODEL_REPOSITORY=/app/bundles \
    LOG_FORMAT=json \
    ORT_DISABLE_TELEMETRY=1
EXPOSE 8000 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('PORT', '8000'), timeout=2); sys.exit(r.status != 200)"]
# Exec form: SIGTERM goes straight to the server, which drains before it exits. One uvicorn worker
# per container, so that batches are not split across processes; scale with replicas.
ENTRYPOINT ["python", "-m", "service"]
