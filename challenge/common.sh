# Shared by do_build.sh / do_test_run.sh / do_save.sh: pick the container engine.
# docker when a Docker engine answers (`docker info`), otherwise ../shared/tools/container.sh
# (buildah + podman; these machines have a docker client but no engine).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="${CXRKIT_IMAGE:-cxrkit-challenge:latest}"
if docker info >/dev/null 2>&1; then
  ENGINE=docker
else
  ENGINE=container.sh
  CONTAINER_SH="${CXRKIT_CONTAINER_SH:-$REPO/../shared/tools/container.sh}"
  if [ ! -f "$CONTAINER_SH" ]; then
    echo "error: no Docker engine answers and $CONTAINER_SH does not exist (set CXRKIT_CONTAINER_SH)" >&2
    exit 2
  fi
  CT=(bash "$CONTAINER_SH")
fi

engine_build() {  # engine_build TAG CONTEXT
  if [ "$ENGINE" = docker ]; then docker build -t "$1" "$2"
  else "${CT[@]}" setup >/dev/null && "${CT[@]}" build "$1" "$2"; fi
}
engine_run() {  # engine_run RUN_ARGS... TAG [CMD...]
  if [ "$ENGINE" = docker ]; then docker run --rm "$@"
  else "${CT[@]}" run "$@"; fi
}
engine_size() {
  if [ "$ENGINE" = docker ]; then docker image inspect -f '{{.Size}}' "$1"
  else podman image inspect -f '{{.Size}}' "$1"; fi
}
engine_save() {  # engine_save TAG OUT.tar.gz
  if [ "$ENGINE" = docker ]; then docker save "$1" | gzip > "$2"
  else "${CT[@]}" save "$1" "$2"; fi
}
python_bin() {  # the project's venv when there is one
  if [ -x "$REPO/.venv/bin/python" ]; then echo "$REPO/.venv/bin/python"; else echo python3; fi
}
