# syntax=docker/dockerfile:1
# Slim serving image: one container serves one agent. It holds the base dependencies plus the `cpu`
# extra (ONNX Runtime) and nothing else: no torch, no training stack.
#
#   docker build -t omad-serve .
#   docker run --rm -p 50051:50051 -v "$PWD/exports/spread:/models:ro" omad-serve --model /models/agent_0.onnx --host 0.0.0.0
#
# The HEALTHCHECK asks 127.0.0.1:50051; if you serve on another port (or with TLS), override it.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN python -m venv /opt/omad
COPY pyproject.toml constraints.txt README.md ./
# Only what `omad serve` and `omad health` import: the command table, the core's errors and agent
# contract, the ONNX runtime and the server (tests/test_docker.py checks this list against the
# server's imports).
COPY omad/__init__.py omad/__main__.py omad/cli.py omad/
COPY omad/core/__init__.py omad/core/errors.py omad/core/agent.py omad/core/
COPY omad/runtime/ omad/runtime/
COPY omad/serve/ omad/serve/
RUN /opt/omad/bin/pip install -c constraints.txt ".[cpu]"
# Fail the build if torch slipped in, or if the serving commands cannot start.
RUN /opt/omad/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is not None)" \
 && /opt/omad/bin/omad health --help > /dev/null \
 && /opt/omad/bin/python -c "import omad.serve.lifecycle"

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin omad
COPY --from=build /opt/omad /opt/omad
ENV PATH=/opt/omad/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /models
# gRPC (Policy, KServe v2, health, reflection) and Prometheus metrics
EXPOSE 50051 9100
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["omad", "health", "--addr", "127.0.0.1:50051", "--timeout", "3"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["omad", "serve"]
CMD ["--model", "/models/model.onnx", "--host", "0.0.0.0", "--port", "50051", "--metrics-port", "9100"]
