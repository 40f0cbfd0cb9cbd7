#!/usr/bin/env bash
# Build the submission image with a model baked in.
#   challenge/do_build.sh [MODEL_DIR]      (default: the test model in challenge/test/model)
# MODEL_DIR is a cxrkit model or ensemble folder; it is exported to ONNX when needed and a
# lean copy (JSON + ONNX) is staged in challenge/build/model. Image tag: $CXRKIT_IMAGE or
# cxrkit-challenge:latest.
source "$(dirname "$0")/common.sh"
MODEL="${1:-$REPO/challenge/test/model}"
STAGE="$REPO/challenge/build/model"
rm -rf "$STAGE"
mkdir -p "$(dirname "$STAGE")"
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
