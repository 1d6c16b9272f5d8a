# One image, both programs: `sidegate sidecar` (the default) and `sidegate operator`.
# Build: docker build -t sidegate:0.1.0 .   (not built in CI here: there is no Docker engine;
# tests/security/test_packaging.py lints this file with hadolint and checkov instead)
# checkov:skip=CKV_DOCKER_2: no HEALTHCHECK: Kubernetes ignores it, and the two entry points
# answer on different ports (the chart and the injector define the probes)

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN pip install --no-cache-dir "uv==0.13.9"
COPY pyproject.toml uv.lock README.md ./
COPY sidegate ./sidegate
# The locked versions, with their hashes, then the project itself without resolving again.
RUN uv export --frozen --no-dev --no-emit-project --format requirements-txt -o requirements.txt \
    && python -m venv /opt/sidegate \
    && /opt/sidegate/bin/pip install --no-cache-dir --require-hashes -r requirements.txt \
    && /opt/sidegate/bin/pip install --no-cache-dir --no-deps .

FROM python:3.11-slim-bookworm
# A fixed non-root UID, so pod securityContext runAsUser/runAsNonRoot can name it.
RUN groupadd --gid 65532 sidegate \
    && useradd --uid 65532 --gid 65532 --no-create-home --shell /usr/sbin/nologin sidegate
COPY --from=build /opt/sidegate /opt/sidegate
ENV PATH=/opt/sidegate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
# 4000: the OpenAI/Anthropic API (loopback in a pod); 4001: the admin API (loopback).
EXPOSE 4000 4001
ENTRYPOINT ["sidegate"]
CMD ["sidecar", "--config", "/etc/sidegate/sidecar.yaml"]
