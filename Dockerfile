# One image for the three relive services; the command picks the service.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    UV_PYTHON_DOWNLOADS=never UV_PROJECT_ENVIRONMENT=/opt/venv UV_COMPILE_BYTECODE=1
# git: code snapshots are git archives plus diffs (relive.code), taken and applied here.
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/* && pip install --no-cache-dir 'uv>=0.4,<1'
WORKDIR /app
COPY pyproject.toml uv.lock ./
COPY clients/python clients/python
COPY services services
COPY examples examples
RUN uv sync --frozen --all-packages --no-dev
ENV PATH=/opt/venv/bin:$PATH RELIVE_HOST=0.0.0.0 RELIVE_CODE_PATH=/app
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import sys,grpc; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; \
c=grpc.insecure_channel('127.0.0.1:50051'); \
sys.exit(0 if g.HealthStub(c).Check(h.HealthCheckRequest(), timeout=2).status == 1 else 1)"
CMD ["python", "-m", "relive.registry.server", "--port", "50051"]
