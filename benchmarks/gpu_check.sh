#!/usr/bin/env bash
# GPU check (issue 13): a few minutes on a machine with an NVIDIA GPU and cxrkit installed.
#
#   bash benchmarks/gpu_check.sh            # PYTHON=... to choose the interpreter
#
# 1. trains a DenseNet-121 on demo data for a few steps with AMP on CUDA and prints images/s
#    (fp32 and AMP, same steps);
# 2. runs `torchrun --nproc_per_node 1` with the NCCL backend (one real DDP training run);
# 3. runs CFT-BP (bp-asl, the autograd loop on the GPU) and the CFT-GA fitness (population
#    scores + exact AUC on the GPU) at the paper's Table XIII size and prints s / category,
#    checking the GPU fitness against the CPU's on the same scores.
# Nothing else in cxrkit depends on a GPU; CI never runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

"$PY" -c "import torch, sys; ok = torch.cuda.is_available(); print('CUDA:', torch.cuda.get_device_name(0) if ok else 'none', '| torch', torch.__version__); sys.exit(0 if ok else 3)" \
  || { echo "gpu_check: no CUDA GPU here; nothing run"; exit 3; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

"$PY" -m cxrkit.cli data demo "$TMP/demo" --n-studies 300 --size 256 >/dev/null
cat > "$TMP/gpu.yaml" <<EOF
name: gpu-check
label_space: chexpert
data:
  train: {table: $TMP/demo/train.csv}
  valid: {table: $TMP/demo/valid.csv}
  label_policy: {uncertain: ones-lsr, unknown: negative}
  cache: memory
preprocessing: {size: 224, channels: 3}
augmentation: {name: chexpert}
model: {backbone: densenet121, in_chans: 3, pretrained: false}
loss: {name: bce, params: {reduction: mean}}
optim: {name: adam, lr: 0.0001}
train: {epochs: 2, batch_size: 32, device: cuda, precision: auto}
EOF

echo "== 2. torchrun --nproc_per_node 1 (NCCL)"
"$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m cxrkit.cli train "$TMP/gpu.yaml" \
  --out "$TMP/ddp" train.epochs=1 2>&1 | grep -E "precision|epoch 1|wrote|Error|error" | head -5
test -f "$TMP/ddp/model/model.safetensors" && echo "torchrun + NCCL: trained and saved"

"$PY" - "$TMP" <<'EOF'
import sys, time
import numpy as np
import torch

tmp = sys.argv[1]
from cxrkit.models import ModelConfig, build_model

print("== 1. training steps, DenseNet-121 224 px, batch 32")
dev = torch.device("cuda")
net = build_model(ModelConfig(backbone="densenet121", in_chans=3), 14, load_weights=False).to(dev)
opt = torch.optim.Adam(net.parameters(), 1e-4)
x = torch.randn(32, 3, 224, 224, device=dev)
y = (torch.rand(32, 14, device=dev) < 0.2).float()
from cxrkit.inference import autocast, resolve_precision

for prec in ("fp32", resolve_precision("auto", dev)[0]):
    scaler = torch.amp.GradScaler("cuda", enabled=prec == "fp16")
    for i in range(25):
        if i == 5:
            torch.cuda.synchronize(); t0 = time.perf_counter()
        with autocast(dev, prec):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x).float(), y)
        opt.zero_grad(); scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
    torch.cuda.synchronize()
    print(f"train {prec:5s}: {20 * 32 / (time.perf_counter() - t0):8.1f} images/s")

print("== 3. CFT on the GPU, Table XIII size (n = 30,000 known, Z = 512, 1,000 epochs / generations)")
from cxrkit.cft.bp import bp_preset, fit_row_bp
from cxrkit.cft.fitness import BinaryScorer, PopulationScorer

rng = np.random.default_rng(0)
n, z = 30000, 512
xs = rng.standard_normal((n, z), dtype=np.float32)
ys = (rng.random(n) < 0.5).astype(int)
xv = rng.standard_normal((3000, z), dtype=np.float32)
yv = (rng.random(3000) < 0.5).astype(int)
w0 = (rng.standard_normal(z) * 0.05).astype(np.float32)
cfg = bp_preset("bp-asl", "coco").with_overrides(epochs=1000, patience=None, metric="auc", device="cuda")
fit_row_bp(xs[:1000], ys[:1000], xv, yv, w0, 0.0, cfg.with_overrides(epochs=5))
t0 = time.perf_counter()
r = fit_row_bp(xs, ys, xv, yv, w0, 0.0, cfg)
print(f"CFT-BP (bp-asl, autograd on {r.stats.get('device')}): {time.perf_counter() - t0:6.2f} s / category (paper 1.07)")
ps = PopulationScorer(xs.T, ys, "auc", torch_device="cuda")
pop = (w0[None] + rng.standard_normal((50, z)).astype(np.float32) * 1e-3)
sols = np.concatenate([pop, np.zeros((50, 1), np.float32)], axis=1)
cpu = BinaryScorer(ys, "auc")(sols[:, :-1] @ xs.T + sols[:, -1:])
gpu = ps(sols)
print(f"GA fitness GPU vs CPU on the same 50 solutions: largest difference {np.abs(gpu - cpu).max():.1e}")
t0 = time.perf_counter()
for g in range(1000):
    ps(sols)
print(f"CFT-GA fitness (50 individuals x 1,000 generations) on the GPU: {time.perf_counter() - t0:6.2f} s / category "
      "(paper, whole GA: 17.65)")
EOF
echo "== 1b. cxrkit train on CUDA (AMP auto), 2 epochs"
"$PY" -m cxrkit.cli train "$TMP/gpu.yaml" --out "$TMP/run" 2>&1 | grep -E "precision|epoch 2" | head -3
echo "gpu_check: done"
