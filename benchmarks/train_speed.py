"""Training throughput on the CPU by precision: fp32 against bf16 autocast, with and without
channels-last, on the nih_hires recipe's network (EfficientNet-Lite0, 192 px, batch 32),
same steps, same run: forward + loss + backward + AdamW step on random images.

    python benchmarks/train_speed.py [--backbone efficientnet_lite0] [--size 192] [--batch 32] [--steps 6]

Prints images/s per setting and the ratio to fp32, and whether the CPU has bf16 units
(AMX-BF16 / AVX-512 BF16): without them PyTorch emulates bf16 and it is slower than fp32,
which is why ``train.precision: auto`` keeps fp32 there.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--size", type=int, default=192)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=6)
    args = ap.parse_args()

    import torch

    from cxrkit.inference import autocast, cpu_has_bf16, resolve_precision
    from cxrkit.runtime import cpu_flags
    from cxrkit.losses import build_loss
    from cxrkit.models import ModelConfig, build_model

    dev = torch.device("cpu")
    units = sorted({"amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2"} & cpu_flags())
    print(f"{args.backbone} at {args.size} px, batch {args.batch}, {args.steps} timed steps, "
          f"{torch.get_num_threads()} threads; CPU units: {', '.join(units) or 'none listed'}; "
          f"bf16 units: {cpu_has_bf16()}; train.precision auto -> {resolve_precision('auto', dev)[0]}")
    loss_fn = build_loss("bce", reduction="mean")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(args.batch, 3, args.size, args.size, generator=gen)
    y = (torch.rand(args.batch, 14, generator=gen) < 0.2).float()
    rows = []
    for prec, cl in (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True)):
        torch.manual_seed(0)
        net = build_model(ModelConfig(backbone=args.backbone, in_chans=3), 14, load_weights=False).train()
        fmt = torch.channels_last if cl else torch.contiguous_format
        net = net.to(memory_format=fmt)
        x = x0.contiguous(memory_format=fmt)
        opt = torch.optim.AdamW(net.parameters(), 1e-3)
        for i in range(args.steps + 1):
            if i == 1:
                t0 = time.perf_counter()
            with autocast(dev, prec):
                loss = loss_fn(net(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        rows.append((f"{prec}{' + channels-last' if cl else ''}", args.steps * args.batch / (time.perf_counter() - t0)))
    base = rows[0][1]
    print(f"\n{'setting':22} {'images/s':>9} {'vs fp32':>8}")
    for name, ips in rows:
        print(f"{name:22} {ips:9.1f} {ips / base:7.2f}x")


if __name__ == "__main__":
    main()
