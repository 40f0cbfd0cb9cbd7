# Leaderboard-submission image: cxrkit's torch-free runtime + an ONNX model, CPU only.
# Build with challenge/do_build.sh (it stages the model into challenge/build/model first).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY challenge/requirements-runtime.txt /tmp/requirements-runtime.txt
RUN pip install --no-cache-dir -r /tmp/requirements-runtime.txt \
    && rm -f /tmp/requirements-runtime.txt

# cxrkit itself without its training dependencies (torch, timm, MONAI, ...)
COPY pyproject.toml README.md /tmp/cxrkit-src/
COPY cxrkit /tmp/cxrkit-src/cxrkit
RUN pip install --no-cache-dir --no-deps /tmp/cxrkit-src \
    && rm -rf /tmp/cxrkit-src /root/.cache \
    && find /usr/local/lib/python3.11 -name "__pycache__" -type d -prune -exec rm -rf {} + \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin cxrkit

# the model, baked in (a read-only mount at /opt/ml/model replaces it)
COPY challenge/build/model /opt/ml/model
RUN chmod -R a+rX /opt/ml/model

ENV CXRKIT_MODEL=/opt/ml/model \
    CXRKIT_CACHE_DIR=/tmp/cxrkit-cache \
    HOME=/tmp \
    CXRKIT_QUIET=1 \
    OMP_NUM_THREADS=2

USER cxrkit
WORKDIR /input
ENTRYPOINT ["cxrkit-submit"]
