"""Build small DICOM files in tests (no real patient data needed for pipeline checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"


def make_dicom(path: str | Path, arr: np.ndarray, photometric: str = "MONOCHROME2", modality: str = "CR",
               body_part: str = "CHEST", view: str = "PA", bits_stored: int | None = None,
               signed: bool = False, **elements: Any) -> Path:
    """Write ``arr`` (2-D integer) as an uncompressed single-frame DICOM. Extra keyword
    arguments become data elements (RescaleSlope=..., WindowCenter=..., ...)."""
    path = Path(path)
    arr = np.asarray(arr)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_IMAGE_STORAGE if modality == "DX" else CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "SECRET^PATIENT"
    ds.PatientID = "SECRET-ID-123"
    ds.Modality = modality
    if body_part:
        ds.BodyPartExamined = body_part
    if view:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits_alloc = 8 if arr.dtype.itemsize == 1 else 16
    ds.BitsAllocated = bits_alloc
    ds.BitsStored = bits_stored or bits_alloc
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16, (8, True): np.int8}[(bits_alloc, signed)]
    ds.PixelData = arr.astype(dtype).tobytes()
    for k, v in elements.items():
        setattr(ds, k, v)
    ds.save_as(path, enforce_file_format=True)
    return path


def compress_copy(src: str | Path, dst: str | Path, transfer_syntax: str) -> Path:
    ds = pydicom.dcmread(src)
    ds.compress(transfer_syntax)
    ds.save_as(dst, enforce_file_format=True)
    return Path(dst)
