# syntax=docker/dockerfile:1
# One image for every Switchboard process; docker-compose.yml picks the command per service:
#   python -m switchboard_catalog | switchboard_metering | switchboard_router | switchboard_demo
# The `switchboard` CLI is installed too (`switchboard health router` is the compose probe).

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

COPY pyproject.toml ./
COPY protos ./protos
COPY services ./services
COPY cli ./cli

# The project and grpcio-tools in one resolve, so the generated code matches the protobuf
# runtime; then the generator is removed from what ships.
RUN pip install . "grpcio-tools>=1.66"

# Same generator, include path and output directory as the Makefile's `gen` target (the
# mypy stubs it also writes are for type checking only and are not needed at run time).
RUN mkdir -p gen/python \
 && python -m grpc_tools.protoc -Iprotos --python_out=gen/python --grpc_python_out=gen/python \
      $(find protos -name '*.proto') \
 && pip uninstall --yes grpcio-tools \
 && python -m compileall -q gen/python

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="switchboard" \
      org.opencontainers.image.description="gRPC-native LLM gateway: catalog, metering, router" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app/gen/python \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SWITCHBOARD_HOST=0.0.0.0
RUN groupadd --system --gid 10001 switchboard \
 && useradd --system --uid 10001 --gid switchboard --home-dir /app --shell /usr/sbin/nologin switchboard \
 && mkdir /certs && chown 10001:10001 /certs
# /certs: where compose's one-shot `certs` service writes the development CA and certificates
# (a named volume mounted there takes this directory's owner).
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/gen/python /app/gen/python
WORKDIR /app
USER 10001:10001
# gRPC: router 50051, catalog 50052, metering 50053. The router's HTTP edge (OpenAI- and
# Anthropic-compatible): 8080. Metrics: 9091-9093. Demo HTTP: 8088.
# SWITCHBOARD_WORKERS (router, metering; default 1): N processes in the container sharing the
# ports, worker i's metrics on the metrics port + 100 i; docker-compose.yml sets "auto".
EXPOSE 50051 50052 50053 8080 9091 9092 9093 8088
CMD ["switchboard", "--help"]
