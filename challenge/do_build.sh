#!/usr/bin/env bash
# Build the submission image with a model baked in.
#   challenge/do_build.sh [MODEL_DIR [INTERFACE.json]]   (default: the test model in challenge/test/model)
# MODEL_DIR is a cxrkit model or ensemble folder; it is exported to ONNX when needed and a
# lean copy (JSON + ONNX) is staged in challenge/build/model. CXRKIT_OPENVINO=1 adds OpenVINO
# to the image (+180 MB; used on Intel CPUs, see docs/leaderboards.md). Image tag: $CXRKIT_IMAGE or
# cxrkit-challenge:latest. INTERFACE.json (or $CXRKIT_GC_INTERFACE_FILE): the grand-challenge
# phase's output sockets, baked in as /opt/ml/interface.json (README, "grand-challenge.org").
source "$(dirname "$0")/common.sh"
MODEL="${1:-$REPO/challenge/test/model}"
STAGE="$REPO/challenge/build/model"
IFACE="${2:-${CXRKIT_GC_INTERFACE_FILE:-}}"
rm -rf "$STAGE" "$REPO/challenge/build/interface"
mkdir -p "$(dirname "$STAGE")" "$REPO/challenge/build/interface"
# the interface file and the model are checked and staged first: a mistake is one line, exit 2
"$(python_bin)" - "$MODEL" "$STAGE" "$IFACE" <<'PY'
import shutil, sys
from pathlib import Path

from cxrkit.errors import CxrkitError

src, dst, iface = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
try:
    if iface:
        from cxrkit.submit import load_interfaces

        n = len(load_interfaces(iface))
        print(f"interface {iface}: {n} algorithm interface(s)")
    if not src.is_dir():
        raise CxrkitError(f"{src}: model folder not found")
    onnx_only = not list(src.rglob("model.safetensors"))
    if onnx_only:  # already a deployment copy
        shutil.copytree(src, dst)
    else:
        from cxrkit.export import deployment_copy

        deployment_copy(src, dst)
except CxrkitError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
print(f"staged {src} -> {dst}")
PY
# the engine set the image installs (Dockerfile): onnxruntime, or onnxruntime + OpenVINO
if [ "${CXRKIT_OPENVINO:-0}" = 1 ]; then echo openvino; else echo onnx; fi > "$REPO/challenge/build/engine"
echo "engine set: $(cat "$REPO/challenge/build/engine")"
if [ -n "$IFACE" ]; then
  cp "$IFACE" "$REPO/challenge/build/interface/interface.json"
  echo "staged interface $IFACE"
fi
if [ "${CXRKIT_STAGE_ONLY:-0}" = 1 ]; then  # tests: stop before the container engine
  echo "staged only (CXRKIT_STAGE_ONLY=1)"
  exit 0
fi
engine_build "$TAG" "$REPO"
size=$(engine_size "$TAG")
echo "built $TAG with $ENGINE: $((size / 1000000)) MB"
mkdir -p "$REPO/challenge/build"
printf '{"tag": "%s", "engine": "%s", "bytes": %s}\n' "$TAG" "$ENGINE" "$size" > "$REPO/challenge/build/image-size.json"
