"""Hostile inputs for tests and ``benchmarks/hostile_folder.py``: decompression bombs, blank
films, DICOM with lying headers, hostile UIDs, a process id that is certainly dead."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np


def png_bomb(path: str | Path, width: int = 20000, height: int = 20000) -> Path:
    """A valid 8-bit grey PNG of ``width`` x ``height`` black pixels, a few hundred KB on disk
    (the image data is compressed row by row, so building it needs no big array)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0 + a row of zeros
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    Path(path).write_bytes(data)
    return Path(path)


def write_png(path: str | Path, arr: np.ndarray) -> Path:
    import cv2

    assert cv2.imwrite(str(path), np.asarray(arr))
    return Path(path)


def film(size: int = 96, seed: int = 0) -> np.ndarray:
    """A grey image with real contrast (a smooth gradient plus noise), uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size]
    img = 40 + 150 * (x / size) + 30 * np.sin(y / 7.0) + rng.normal(0, 10, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


#: header values no output may ever show
PHI = {"PatientName": "Zyxwv^Qutsr^Middleton^Dr^III", "PatientID": "PID-7734-ZQX", "PatientBirthDate": "19230417",
       "AccessionNumber": "ACC-99812-ZQ", "OtherPatientIDs": "OPID-5521-ZQ", "PatientAddress": "12 Qwerty Lane Zqx",
       "InstitutionName": "Zqx Memorial Hospital", "ReferringPhysicianName": "Vwxyz^Referrer"}
