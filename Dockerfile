# Leaderboard-submission image: cxrkit's torch-free runtime + an ONNX model, CPU only.
# Build with challenge/do_build.sh (it stages the model into challenge/build/model first).
# Leaderboards run x86-64 Linux: the platform is fixed, whatever machine builds the image.
FROM --platform=linux/amd64 python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# every runtime package pinned with its hashes (challenge/lock.sh writes the lock files), so two
# builds a month apart install the same bytes. challenge/build/engine (written by do_build.sh)
# says which set: "onnx" (onnxruntime only, the default) or "openvino" (the same packages at
# the same versions plus OpenVINO: CXRKIT_OPENVINO=1 challenge/do_build.sh)
COPY challenge/requirements-runtime.lock challenge/requirements-openvino.lock challenge/build/engine /tmp/req/
RUN lock=runtime; if [ "$(cat /tmp/req/engine)" = openvino ]; then lock=openvino; fi \
    && pip install --no-cache-dir --require-hashes --no-deps -r /tmp/req/requirements-$lock.lock \
    && rm -rf /tmp/req

# cxrkit itself without its training dependencies (torch, timm, MONAI, ...)
COPY pyproject.toml README.md /tmp/cxrkit-src/
COPY cxrkit /tmp/cxrkit-src/cxrkit
RUN pip install --no-cache-dir --no-deps /tmp/cxrkit-src \
    && rm -rf /tmp/cxrkit-src /root/.cache \
    && find /usr/local/lib/python3.11 -name "__pycache__" -type d -prune -exec rm -rf {} + \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin cxrkit

# the model, baked in (a read-only mount at /opt/ml/model replaces it); an interface.json next to
# it (challenge/build/interface.json, optional) maps grand-challenge output sockets
COPY challenge/build/model /opt/ml/model
COPY challenge/build/interface /opt/ml/
RUN chmod -R a+rX /opt/ml

ENV CXRKIT_MODEL=/opt/ml/model \
    CXRKIT_CACHE_DIR=/tmp/cxrkit-cache \
    HOME=/tmp \
    ORT_DISABLE_TELEMETRY=1 \
    CXRKIT_QUIET=1 \
    OMP_NUM_THREADS=2

# any uid works (CodaLab runs as an arbitrary uid): nothing is written outside /output and /tmp
USER 10001
WORKDIR /input
ENTRYPOINT ["cxrkit-submit"]
