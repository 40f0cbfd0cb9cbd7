"""Datasets that do not starve the model.

Images are decoded (full DICOM pipeline) and resized **once** into an :class:`ImageSet`: a
N x H x W ``uint8`` (or ``uint16``) array, kept in memory or in a memory-mapped file under a
cache folder keyed by the files (path, size, mtime) and the preprocessing, so later runs,
CFT's feature extraction and evaluation reuse it. Decoding runs in parallel workers with a
progress bar; unreadable files are recorded with their reason and left out, never fatal.

Training then reads the cached array: augmentation is seeded per (seed, epoch, index), and
the :class:`EpochSampler` encodes the epoch into the index, so results do not depend on the
number of workers and a resumed run repeats exactly what an uninterrupted run would do.
This is the role of MONAI's CacheDataset / PersistentDataset, with one memory map instead
of a pickle per item (nothing is unpickled when the cache is read back).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import CxrkitError, FailureReason, ImageReadError
from ..utils import atomic_write, cache_root, progress, update_with_file_stats
from .preprocess import Preprocessing

log = logging.getLogger(__name__)

CACHE_DTYPES = {"uint8": (np.uint8, 255.0), "uint16": (np.uint16, 65535.0)}


def default_cache_dir() -> Path:
    """Decoded-image cache: ``$CXRKIT_CACHE_DIR`` or ``~/.cache/cxrkit/images``."""
    env = os.environ.get("CXRKIT_CACHE_DIR")
    if env:
        return Path(env)
    return cache_root() / "images"


@dataclass
class ImageSet:
    """Decoded, resized images of a list of files (rows aligned with the list)."""

    images: np.ndarray
    ok: np.ndarray
    failures: list[dict[str, str]] = field(default_factory=list)
    scale: float = 255.0
    cache_file: Path | None = None

    def __len__(self) -> int:
        return len(self.ok)

    def get(self, i: int) -> np.ndarray:
        return self.images[i].astype(np.float32) / np.float32(self.scale)


def _file_key(paths: Sequence[Path], pre: Preprocessing, dtype: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(pre.to_dict(), sort_keys=True).encode())
    h.update(dtype.encode())
    update_with_file_stats(h, [os.path.abspath(p) for p in paths])
    return h.hexdigest()[:24]


class _Decode(Dataset):
    def __init__(self, paths: Sequence[Path], pre: Preprocessing, dtype: np.dtype, scale: float) -> None:
        self.paths, self.pre, self.dtype, self.scale = list(paths), pre, dtype, scale

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str, str]:
        try:
            img = self.pre.load(self.paths[i])
        except ImageReadError as e:
            return i, None, e.reason.value, e.detail
        except Exception as e:  # any decoder crash on a bad file is that file's failure
            return i, None, FailureReason.UNREADABLE.value, f"{type(e).__name__}: {e}"
        q = np.clip(np.rint(img * self.scale), 0, self.scale).astype(self.dtype)
        return i, q, "", ""


def _identity(x: Any) -> Any:
    return x


def load_images(paths: Sequence[str | Path], pre: Preprocessing, cache: str = "disk", cache_dir: str | Path | None = None,
                workers: int = 0, dtype: str = "uint8", description: str = "decoding images",
                show_progress: bool = True) -> ImageSet:
    """Decode and resize every file once. ``cache``: ``disk`` (memory-mapped file under
    ``cache_dir``, reused across runs) or ``memory``."""
    if dtype not in CACHE_DTYPES:
        raise CxrkitError(f"cache dtype must be one of {sorted(CACHE_DTYPES)}, got {dtype!r}")
    if cache not in ("disk", "memory"):
        raise CxrkitError(f"cache must be 'disk' or 'memory', got {cache!r}")
    np_dtype, scale = CACHE_DTYPES[dtype]
    paths = [Path(p) for p in paths]
    h, w = pre.hw
    n = len(paths)
    shape = (n, h, w, 3) if pre.colour == "rgb" else (n, h, w)
    meta_file = data_file = None
    if cache == "disk":
        cdir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        cdir.mkdir(parents=True, exist_ok=True)
        key = _file_key(paths, pre, dtype)
        data_file, meta_file = cdir / f"{key}.npy", cdir / f"{key}.json"
        if data_file.is_file() and meta_file.is_file():
            try:
                meta = json.loads(meta_file.read_text())
                arr = np.load(data_file, mmap_mode="r")
                if meta.get("complete") and arr.shape == shape:
                    ok = np.ones(n, dtype=bool)
                    for f in meta["failures"]:
                        ok[int(f["row"])] = False
                    log.info("image cache hit: %s (%d images)", data_file.name, n)
                    return ImageSet(arr, ok, meta["failures"], scale, data_file)
            except (ValueError, OSError, KeyError, json.JSONDecodeError):
                log.warning("image cache %s unreadable; rebuilding", data_file)
        tmp_data = data_file.with_name(f".{data_file.name}.{os.getpid()}.tmp")
        arr = np.lib.format.open_memmap(tmp_data, mode="w+", dtype=np_dtype, shape=shape)
    else:
        arr = np.zeros(shape, dtype=np_dtype)
    ok = np.zeros(n, dtype=bool)
    failures: list[dict[str, str]] = []
    loader = DataLoader(_Decode(paths, pre, np_dtype, scale), batch_size=None, shuffle=False, num_workers=workers,
                        collate_fn=_identity, prefetch_factor=8 if workers else None)
    for i, img, reason, detail in progress(loader, description, total=n, enabled=show_progress):
        if img is None:
            failures.append({"row": int(i), "path": str(paths[i]), "reason": reason, "detail": detail})
        else:
            arr[i] = img
            ok[i] = True
    if failures:
        log.warning("%d of %d images could not be read (first: %s: %s)", len(failures), n, failures[0]["path"],
                    failures[0]["detail"])
    if cache == "disk":
        assert data_file is not None and meta_file is not None
        arr.flush()
        del arr
        os.replace(tmp_data, data_file)
        with atomic_write(meta_file) as tmp:
            tmp.write_text(json.dumps({"complete": True, "n": n, "shape": list(shape), "dtype": dtype,
                                       "preprocessing": pre.to_dict(), "failures": failures}))
        return ImageSet(np.load(data_file, mmap_mode="r"), ok, failures, scale, data_file)
    return ImageSet(arr, ok, failures, scale, None)


def sample_seed(*parts: int) -> int:
    """A 32-bit seed from integers (seed, epoch, index): independent streams per sample."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


class ImageDataset(Dataset):
    """Rows of an :class:`ImageSet` as normalised tensors, optionally augmented.

    Items are requested by ``epoch * len(self) + i`` (see :class:`EpochSampler`) and returned
    as ``(tensor C x H x W, i)``; plain indices ``0..len-1`` mean epoch 0."""

    def __init__(self, images: ImageSet, rows: Sequence[int] | np.ndarray, pre: Preprocessing,
                 augment: Callable[[np.ndarray, int], np.ndarray] | None = None, seed: int = 0) -> None:
        self.images = images
        self.rows = np.asarray(rows, dtype=np.int64)
        self.pre = pre
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int) -> tuple[torch.Tensor, int]:
        epoch, i = divmod(int(key), len(self.rows))
        img = self.images.get(int(self.rows[i]))
        if self.augment is not None:
            img = self.augment(img, sample_seed(self.seed, epoch, i))
        return torch.from_numpy(self.pre.normalize(img)), i


class EpochSampler(Sampler[int]):
    """Seeded per-epoch shuffling, sharded across DDP ranks; yields ``epoch * n + i``."""

    def __init__(self, n: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: bool = True) -> None:
        self.n, self.shuffle, self.seed, self.rank, self.world = n, shuffle, seed, rank, world_size
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> np.ndarray:
        idx = (np.random.default_rng([self.seed, self.epoch]).permutation(self.n) if self.shuffle
               else np.arange(self.n))
        if self.world > 1:
            if self.pad and self.n % self.world:
                idx = np.concatenate([idx, idx[: self.world - self.n % self.world]])
            idx = idx[self.rank::self.world]
        return idx

    def __len__(self) -> int:
        if self.world == 1:
            return self.n
        return -(-self.n // self.world) if self.pad else len(range(self.rank, self.n, self.world))

    def __iter__(self) -> Iterator[int]:
        base = self.epoch * self.n
        return iter((base + int(i)) for i in self.order())


class FileDataset(Dataset):
    """Files -> (normalised tensor, index); unreadable files give a zero tensor and a reason."""

    def __init__(self, paths: Sequence[Path], pre: Preprocessing) -> None:
        self.paths = list(paths)
        self.pre = pre

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str, str]:
        try:
            x = self.pre(self.paths[i])
            return x, i, "", ""
        except ImageReadError as e:
            reason, detail = e.reason.value, e.detail
        except Exception as e:  # a decoder crash on one file is that file's failure
            reason, detail = FailureReason.UNREADABLE.value, f"{type(e).__name__}: {e}"
        h, w = self.pre.hw
        return torch.zeros(self.pre.channels, h, w), i, reason, detail


def readable_batches(loader: DataLoader, on_failure: Callable[[int, str, str], None]
                     ) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """Batches of a :class:`FileDataset` loader without the unreadable files; each failure
    is reported as ``on_failure(index, reason, detail)``."""
    for x, idx, reasons, details in loader:
        good = np.array([r == "" for r in reasons], dtype=bool)
        for j in np.flatnonzero(~good):
            on_failure(int(idx[j]), reasons[j], details[j])
        if good.any():
            sel = torch.from_numpy(np.flatnonzero(good))
            yield x.index_select(0, sel), idx.numpy()[good]
