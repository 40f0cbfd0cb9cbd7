#!/usr/bin/env bash
# Build the submission image with a model baked in.
#   challenge/do_build.sh [MODEL_DIR [INTERFACE.json]]   (default: the test model in challenge/test/model)
# MODEL_DIR is a cxrkit model or ensemble folder; it is exported to ONNX when needed and a
# lean copy (JSON + ONNX) is staged in challenge/build/model. Image tag: $CXRKIT_IMAGE or
# cxrkit-challenge:latest. INTERFACE.json (or $CXRKIT_GC_INTERFACE_FILE): the grand-challenge
# phase's output sockets, baked in as /opt/ml/interface.json (README, "grand-challenge.org").
source "$(dirname "$0")/common.sh"
MODEL="${1:-$REPO/challenge/test/model}"
STAGE="$REPO/challenge/build/model"
IFACE="${2:-${CXRKIT_GC_INTERFACE_FILE:-}}"
rm -rf "$STAGE" "$REPO/challenge/build/interface"
mkdir -p "$(dirname "$STAGE")" "$REPO/challenge/build/interface"
if [ -n "$IFACE" ]; then
  "$(python_bin)" -c "import sys; from cxrkit.submit import load_interface; load_interface(sys.argv[1])" "$IFACE"
  cp "$IFACE" "$REPO/challenge/build/interface/interface.json"
  echo "staged interface $IFACE"
fi
"$(python_bin)" - "$MODEL" "$STAGE" <<'PY'
import shutil, sys
from pathlib import Path
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
onnx_only = not list(src.rglob("model.safetensors"))
if onnx_only:  # already a deployment copy
    shutil.copytree(src, dst)
else:
    from cxrkit.export import deployment_copy
    deployment_copy(src, dst)
print(f"staged {src} -> {dst}")
PY
engine_build "$TAG" "$REPO"
size=$(engine_size "$TAG")
echo "built $TAG with $ENGINE: $((size / 1000000)) MB"
