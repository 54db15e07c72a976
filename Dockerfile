# tilecast serve in a container, usable as a Vertex AI custom container (and on any other container platform).
#
#   docker build -t tilecast-serve .                                  # serves the models in ./models
#   docker build -t tilecast-serve --build-arg MODEL_DIR=my_models --build-arg EXTRAS=server,torch .
#   docker run --rm -p 8080:8080 tilecast-serve                       # extra `tilecast serve` options may follow
#
# Vertex AI sets AIP_HTTP_PORT, AIP_HEALTH_ROUTE and AIP_PREDICT_ROUTE when it starts the container; the ENV lines
# below are the defaults for a local run. `tilecast serve` answers Vertex's {"instances": [...]} requests on
# $AIP_PREDICT_ROUTE (first model) and is ready on $AIP_HEALTH_ROUTE, beside its KServe v2 and TF Serving routes.
# The models are baked into the image (/models, TILECAST_MODEL); Vertex's AIP_STORAGE_URI (gs://...) is not read.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Extras to install: [server] is the HTTP/gRPC server with ONNX Runtime; add torch or tf for those model formats.
ARG EXTRAS=server
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN python -m venv /opt/tilecast \
    && /opt/tilecast/bin/python -m pip install --no-cache-dir ".[${EXTRAS}]"

FROM ${PYTHON_IMAGE}
ARG MODEL_DIR=models
RUN groupadd --system --gid 10001 tilecast \
    && useradd --system --uid 10001 --gid tilecast --home-dir /home/tilecast --create-home \
        --shell /usr/sbin/nologin tilecast
COPY --from=build /opt/tilecast /opt/tilecast
COPY --chown=tilecast:tilecast ${MODEL_DIR} /models
ENV PATH=/opt/tilecast/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    AIP_HTTP_PORT=8080 \
    AIP_HEALTH_ROUTE=/health \
    AIP_PREDICT_ROUTE=/predict \
    TILECAST_HOST=0.0.0.0 \
    TILECAST_MODEL=/models
USER 10001:10001
WORKDIR /home/tilecast
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:' + os.environ['AIP_HTTP_PORT'] + os.environ['AIP_HEALTH_ROUTE'], timeout=4)"]
# A shell reads the AIP_* variables at start (Vertex sets them then), and `exec` makes tilecast PID 1, so SIGTERM
# reaches it and in-flight requests finish. Arguments given to `docker run` are appended to `tilecast serve`.
ENTRYPOINT ["/bin/sh", "-c", "exec tilecast serve --host \"$TILECAST_HOST\" --port \"$AIP_HTTP_PORT\" \"$TILECAST_MODEL\" \"$@\"", "tilecast-serve"]
CMD []
