"""Image readers: PNG / JPEG (8 and 16 bit, grey or colour) and DICOM.

Every reader returns a 2-D ``float32`` array in [0, 1] (0 = black) and raises
:class:`~cxrkit.errors.ImageReadError` naming the file and a
:class:`~cxrkit.errors.FailureReason` for anything it cannot use.

DICOM pixel pipeline, in this order (SPEC section 2):

1. stored values (decoded through pydicom's pixel handlers; compressed transfer syntaxes
   via the pylibjpeg plugins: JPEG baseline / extended / lossless and JPEG-LS by
   pylibjpeg-libjpeg, JPEG 2000 by pylibjpeg-openjpeg, RLE by pylibjpeg-rle),
2. Modality LUT or RescaleSlope / RescaleIntercept,
3. VOI LUT (preferred when present) or the first Window Center / Width (LINEAR,
   LINEAR_EXACT or SIGMOID), mapped onto [0, 1]; without either, min-max of the image,
4. inversion when PhotometricInterpretation is MONOCHROME1,
5. (scaling to the model's input happens in :mod:`cxrkit.data.preprocess`).
"""

from __future__ import annotations

import contextlib
import os
import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..errors import FailureReason, ImageReadError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".mha", ".mhd"}
METAIMAGE_SUFFIXES = {".mha", ".mhd"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic", ".ima"}
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")

cv2.setNumThreads(1)  # decoding runs in data-loader workers; one thread each avoids oversubscription


@dataclass
class ImageLimits:
    """What a reader accepts, checked before (size) and after (content) decoding.

    ``max_pixels``: declared width x height (x frames) above this is ``too_large``, refused
    from the header before any pixel is decoded (a 390 KB PNG can declare 20000 x 20000);
    ``min_size``: a shorter side below this is ``too_small``; ``min_range``: an image whose
    intensities (in [0, 1], 0.5th to 99.5th percentile) span less than this is ``empty``
    (blank, constant or near-constant films would otherwise get confident calls)."""

    max_pixels: int = 100_000_000
    min_size: int = 32
    min_range: float = 0.02


def _env_limits() -> ImageLimits:
    """Defaults, or CXRKIT_MAX_PIXELS / CXRKIT_MIN_SIZE / CXRKIT_MIN_RANGE (the container)."""
    import os

    lim = ImageLimits()
    for key, attr, conv in (("CXRKIT_MAX_PIXELS", "max_pixels", int), ("CXRKIT_MIN_SIZE", "min_size", int),
                            ("CXRKIT_MIN_RANGE", "min_range", float)):
        if os.environ.get(key):
            try:
                setattr(lim, attr, conv(os.environ[key]))
            except ValueError:
                log.warning("%s=%r is not a number; using %s", key, os.environ[key], getattr(lim, attr))
    return lim


LIMITS = _env_limits()


def set_limits(max_pixels: int | None = None, min_size: int | None = None, min_range: float | None = None) -> None:
    """Change the process-wide :data:`LIMITS` (decoding workers forked later inherit them)."""
    if max_pixels is not None:
        LIMITS.max_pixels = int(max_pixels)
    if min_size is not None:
        LIMITS.min_size = int(min_size)
    if min_range is not None:
        LIMITS.min_range = float(min_range)


def check_declared_size(path: str | Path, width: int, height: int, frames: int = 1) -> None:
    """Raise ``too_large`` when a header declares more pixels than :data:`LIMITS` allows."""
    n = int(width) * int(height) * max(1, int(frames))
    if n > LIMITS.max_pixels:
        raise ImageReadError(path, FailureReason.TOO_LARGE,
                             f"declares {width} x {height}" + (f" x {frames} frames" if frames > 1 else "")
                             + f" = {n / 1e6:.0f} megapixels, above the limit of {LIMITS.max_pixels / 1e6:.0f}")


def check_content(img: np.ndarray, path: str | Path) -> np.ndarray:
    """Refuse images too small to be a film or without contrast (see :class:`ImageLimits`)."""
    h, w = img.shape[:2]
    if min(h, w) < LIMITS.min_size:
        raise ImageReadError(path, FailureReason.TOO_SMALL,
                             f"image is {w} x {h} pixels; the shorter side must be at least {LIMITS.min_size}")
    if LIMITS.min_range > 0:
        step = max(1, int(np.sqrt(h * w / 65536.0)))
        sample = np.asarray(img[::step, ::step], dtype=np.float32)
        lo, hi = np.percentile(sample, [0.5, 99.5])
        if not hi - lo >= LIMITS.min_range:
            raise ImageReadError(path, FailureReason.EMPTY,
                                 f"image is blank or near-constant (intensity spread {max(hi - lo, 0.0):.3f} "
                                 f"< {LIMITS.min_range})")
    return img


def _raster_header_size(p: Path) -> None:
    """Check a raster's declared size from its header (PIL reads headers lazily)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover (a runtime without Pillow: OpenCV's own pixel cap applies)
        return

    Image.MAX_IMAGE_PIXELS = None  # cxrkit applies its own limit, with a reason instead of a warning
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(p) as im:
                w, h = im.size
                frames = int(getattr(im, "n_frames", 1) or 1)
    except Exception:  # not something PIL can identify: the decoder will say what it is
        return
    check_declared_size(p, w, h, 1)
    if frames > 1 and w * h * frames > LIMITS.max_pixels:
        check_declared_size(p, w, h, frames)


@contextlib.contextmanager
def _quiet_stderr() -> Any:
    """Silence what C libraries write to file descriptor 2 (libpng's "iCCP: known incorrect
    sRGB profile", libjpeg's "Corrupt JPEG data"): cxrkit reports problems itself. Only on the
    main thread (the descriptor is process-wide)."""
    import os
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def is_dicom_file(path: str | Path) -> bool:
    """True if the file has the DICOM preamble (``DICM`` at byte 128) or a DICOM suffix."""
    p = Path(path)
    if p.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(132)
        return len(head) == 132 and head[128:132] == b"DICM"
    except OSError:
        return False


#: JPEG files (and JPEG-baseline DICOM frames) are decoded inside libjpeg-turbo at a reduced (M/8) scale when the caller gives
#: the size it needs (``min_hw``) and the result keeps at least REDUCED_MARGIN times the model's
#: input (simplejpeg; libjpeg-turbo scales by M/8; measured: docs/results.md). CXRKIT_JPEG_SCALED=0
#: decodes at full size.
REDUCED_MARGIN = 4.0


def reduced_decode_enabled() -> bool:
    if os.environ.get("CXRKIT_JPEG_SCALED", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        import simplejpeg  # noqa: F401
    except ImportError:
        return False
    return True


def _decode_jpeg_scaled(buf: np.ndarray, p: Path, min_hw: tuple[int, int]) -> np.ndarray | None:
    """A JPEG decoded at the smallest libjpeg-turbo scale (M/8) that keeps it at least
    ``min_hw``; grey stays 2-D, colour is BGR (as OpenCV decodes it). None: not possible here
    (no simplejpeg, not a baseline / progressive 8-bit JPEG libjpeg-turbo reads, full size
    needed anyway), and the caller decodes as before."""
    import simplejpeg

    data = buf.tobytes()
    try:
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if h < 2 * min_hw[0] or w < 2 * min_hw[1]:
            return None  # no reduction would keep the margin: full decode as before
        grey = str(colorspace).lower() == "gray"
        arr = simplejpeg.decode_jpeg(data, colorspace="GRAY" if grey else "BGR", min_height=int(min_hw[0]),
                                     min_width=int(min_hw[1]))
    except (ValueError, RuntimeError):
        return None
    return arr[:, :, 0] if grey and arr.ndim == 3 else arr


def read_image(path: str | Path, intensity: str = "auto", min_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Read any supported image as a 2-D float32 array in [0, 1].

    ``intensity``: ``auto`` (8-bit / 255; 16-bit by its estimated bit depth; DICOM by its
    VOI window) or ``minmax`` (stretch every image to its own min..max). ``min_hw``: the
    smallest size the caller needs; a JPEG may then be decoded at a reduced scale that keeps
    at least it (:data:`REDUCED_MARGIN` times the model's size, see ``Preprocessing``).
    """
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, FailureReason.MISSING, "file not found")
    if p.is_dir():
        raise ImageReadError(p, FailureReason.UNREADABLE, "is a folder, not an image")
    if is_dicom_file(p):
        img, _ = read_dicom(p, min_hw)
        if intensity == "minmax":
            img = _minmax(img, p)
        return img
    if p.suffix.lower() in METAIMAGE_SUFFIXES:
        return read_metaimage(p, intensity=intensity)
    return read_raster(p, intensity=intensity, min_hw=min_hw)


def read_image_rgb(path: str | Path, intensity: str = "auto", min_hw: tuple[int, int] | None = None) -> np.ndarray:
    """Any supported image as H x W x 3 float32 RGB in [0, 1]: colour rasters keep their
    colour; grey images, DICOM and MetaImage are repeated over the three channels."""
    p = Path(path)
    if p.suffix.lower() in METAIMAGE_SUFFIXES or is_dicom_file(p) or not p.exists() or p.is_dir():
        return np.repeat(read_image(p, intensity, min_hw)[..., None], 3, axis=2)
    arr = _decode_raster(p, min_hw)
    if arr.ndim == 3 and arr.shape[2] >= 3:
        return check_content(_scale_raster(cv2.cvtColor(arr[:, :, :3], cv2.COLOR_BGR2RGB), p, intensity), p)
    return np.repeat(check_content(_scale_raster(_raster_grey(arr, p), p, intensity), p)[..., None], 3, axis=2)


def read_raster(path: str | Path, intensity: str = "auto", min_hw: tuple[int, int] | None = None) -> np.ndarray:
    """PNG / JPEG / BMP / TIFF, 8 or 16 bit, grey, grey+alpha, RGB or RGBA -> grey [0, 1]."""
    p = Path(path)
    return check_content(_scale_raster(_raster_grey(_decode_raster(p, min_hw), p), p, intensity), p)


def _decode_raster(p: Path, min_hw: tuple[int, int] | None = None) -> np.ndarray:
    """The file's pixels as OpenCV decodes them (BGR order, any depth), or a typed error; a
    JPEG at a reduced scale when ``min_hw`` allows it (:func:`_decode_jpeg_scaled`)."""
    try:
        buf = np.fromfile(p, dtype=np.uint8)
    except OSError as e:
        raise ImageReadError(p, FailureReason.UNREADABLE, f"cannot read file ({e.strerror or e})") from None
    if buf.size == 0:
        raise ImageReadError(p, FailureReason.EMPTY, "file is empty (0 bytes)")
    _raster_header_size(p)
    if min_hw and buf[:2].tobytes() == b"\xff\xd8" and reduced_decode_enabled():
        small = _decode_jpeg_scaled(buf, p, min_hw)
        if small is not None:
            return small
    with _quiet_stderr():  # OpenCV prints libpng / libjpeg warnings straight to file descriptor 2
        arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if arr is None:
        if buf[:4].tobytes() == b"\x89PNG" or buf[:2].tobytes() == b"\xff\xd8":
            raise ImageReadError(p, FailureReason.TRUNCATED, "image data is corrupt or truncated")
        raise ImageReadError(p, FailureReason.UNREADABLE, "not a readable PNG/JPEG/BMP/TIFF image")
    if arr.size == 0:
        raise ImageReadError(p, FailureReason.UNREADABLE, f"unexpected image shape {arr.shape}")
    return arr


#: a 3-channel raster is a colour picture (not a grey film stored as RGB) when more than this
#: share of its pixels have channels apart by more than COLOUR_SPREAD of the full range
COLOUR_SPREAD = 0.10
COLOUR_SHARE = 0.05


def colour_share(arr: np.ndarray) -> float:
    """Share of the pixels of a 3-channel image whose channels differ by more than
    ``COLOUR_SPREAD`` of the full range (a 4x4 subsample). Grey films saved as RGB or as
    YCbCr JPEG (chroma noise of a few levels) give ~0; colour photographs 0.2 to 1; a film
    with a small coloured marker or ruler burned in stays under 0.05."""
    sub = arr[::4, ::4, :3]
    full = 65535.0 if arr.dtype == np.uint16 else 255.0 if arr.dtype == np.uint8 else max(float(sub.max()), 1e-6)
    spread = sub.max(axis=2).astype(np.float32) - sub.min(axis=2).astype(np.float32)
    return float((spread > COLOUR_SPREAD * full).mean()) if spread.size else 0.0


def check_not_colour(arr: np.ndarray, p: Path) -> None:
    """Refuse a colour picture where a grey film is read (a chest model would otherwise give a
    photograph confident calls), as a colour DICOM is refused; grey stored as RGB passes."""
    share = colour_share(arr)
    if share > COLOUR_SHARE:
        raise ImageReadError(p, FailureReason.COLOUR,
                             f"colour image ({100 * share:.0f}% of pixels coloured): this model reads grey films; "
                             "a colour picture is not a radiograph")


def _raster_grey(arr: np.ndarray, p: Path) -> np.ndarray:
    """Grey, grey + alpha, BGR or BGRA pixels -> one grey channel of the same depth."""
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]
        if arr.shape[2] == 2:  # grey + alpha
            arr = arr[:, :, 0]
        elif arr.shape[2] == 3:
            check_not_colour(arr, p)
            if arr.dtype == np.uint16:
                arr = cv2.cvtColor(arr.astype(np.float32), cv2.COLOR_BGR2GRAY)
                arr = np.clip(np.rint(arr), 0, 65535).astype(np.uint16)
            else:
                arr = cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
        elif arr.shape[2] == 1:
            arr = arr[:, :, 0]
    if arr.ndim != 2 or arr.size == 0:
        raise ImageReadError(p, FailureReason.UNREADABLE, f"unexpected image shape {arr.shape}")
    return arr


def _scale_raster(arr: np.ndarray, p: Path, intensity: str) -> np.ndarray:
    """Stored values -> float32 [0, 1]: 8 bit / 255, 16 bit by its bit depth, anything else
    (or ``intensity="minmax"``) min-max."""
    if intensity != "minmax":
        if arr.dtype == np.uint8:
            return arr.astype(np.float32) / 255.0
        if arr.dtype == np.uint16:
            return arr.astype(np.float32) / float(_bit_range(int(arr.max())))
    return _minmax(arr.astype(np.float32), p)


_MET_TYPES = {"MET_UCHAR": np.uint8, "MET_CHAR": np.int8, "MET_USHORT": np.uint16, "MET_SHORT": np.int16,
              "MET_UINT": np.uint32, "MET_INT": np.int32, "MET_FLOAT": np.float32, "MET_DOUBLE": np.float64}


def read_metaimage(path: str | Path, intensity: str = "auto") -> np.ndarray:
    """MetaImage (``.mha`` with the data inline, or ``.mhd`` + raw file; raw or zlib
    compressed), as grand-challenge delivers images: a 2-D image (or a 3-D one with a single
    slice), grey or RGB -> grey [0, 1]."""
    import zlib

    p = Path(path)
    raw = p.read_bytes()
    header: dict[str, str] = {}
    pos = 0
    while True:
        end = raw.find(b"\n", pos)
        if end < 0:
            raise ImageReadError(p, FailureReason.UNREADABLE, "MetaImage header has no ElementDataFile line")
        line = raw[pos:end].decode("latin-1").strip()
        pos = end + 1
        if "=" in line:
            k, v = (x.strip() for x in line.split("=", 1))
            header[k] = v
            if k == "ElementDataFile":
                break
    try:
        dims = [int(v) for v in header["DimSize"].split()]
        dtype = np.dtype(_MET_TYPES[header["ElementType"]])
    except KeyError as e:
        raise ImageReadError(p, FailureReason.UNREADABLE, f"MetaImage header lacks or has an unknown {e}") from None
    if header.get("BinaryDataByteOrderMSB", header.get("ElementByteOrderMSB", "False")).lower() == "true":
        dtype = dtype.newbyteorder(">")
    channels = int(header.get("ElementNumberOfChannels", "1"))
    data_file = header["ElementDataFile"]
    data = raw[pos:] if data_file.upper() == "LOCAL" else (p.parent / data_file).read_bytes()
    if header.get("CompressedData", "False").lower() == "true":
        try:
            data = zlib.decompress(data)
        except zlib.error:
            raise ImageReadError(p, FailureReason.TRUNCATED, "MetaImage compressed data is corrupt") from None
    n = int(np.prod(dims)) * channels
    if len(dims) >= 2:
        check_declared_size(p, dims[0], dims[1], int(np.prod(dims[2:])) if len(dims) > 2 else 1)
    if len(data) < n * dtype.itemsize:
        raise ImageReadError(p, FailureReason.TRUNCATED, "MetaImage data is shorter than its header says")
    arr = np.frombuffer(data[: n * dtype.itemsize], dtype=dtype).reshape(*dims[::-1], channels)
    if arr.ndim == 4:  # z, y, x, c
        if arr.shape[0] != 1:
            raise ImageReadError(p, FailureReason.MULTI_FRAME, f"3-D image with {arr.shape[0]} slices; expected one")
        arr = arr[0]
    arr = arr.astype(np.float32)
    img = arr[..., 0] if channels == 1 else arr[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    if intensity == "auto" and dtype.kind == "u" and dtype.itemsize == 1:
        return check_content(img / 255.0, p)
    if intensity == "auto" and dtype.kind == "u" and dtype.itemsize == 2:
        return check_content(img / float(_bit_range(int(img.max()))), p)
    return check_content(_minmax(img, p), p)


def write_metaimage(path: str | Path, img: np.ndarray, compress: bool = True) -> Path:
    """Write a 2-D uint8 / uint16 image as ``.mha`` (for tests and grand-challenge inputs)."""
    import zlib

    arr = np.ascontiguousarray(img)
    kind = {np.dtype(np.uint8): "MET_UCHAR", np.dtype(np.uint16): "MET_USHORT"}[arr.dtype]
    data = arr.tobytes()
    if compress:
        data = zlib.compress(data)
    hdr = (f"ObjectType = Image\nNDims = 2\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
           f"CompressedData = {compress}\nDimSize = {arr.shape[1]} {arr.shape[0]}\nElementSpacing = 1 1\n"
           f"ElementType = {kind}\nElementDataFile = LOCAL\n")
    Path(path).write_bytes(hdr.encode() + data)
    return Path(path)


def _bit_range(vmax: int) -> int:
    """Full-scale value of a 16-bit container: 10/12/14/16 significant bits, the smallest that
    holds ``vmax`` (12-bit radiographs stored in 16-bit PNG are not darkened)."""
    for bits in (10, 12, 14, 16):
        if vmax < 2**bits:
            return 2**bits - 1
    return 65535


def _minmax(arr: np.ndarray, path: str | Path) -> np.ndarray:
    """Stretch to [0, 1] by the image's own range (float32; min / max on the native dtype)."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "f":
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        if not np.isfinite(lo) or not np.isfinite(hi):
            raise ImageReadError(path, FailureReason.UNREADABLE, "image contains non-finite values")
    else:
        lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        raise ImageReadError(path, FailureReason.EMPTY, "image is constant (no contrast)")
    out = arr.astype(np.float32)
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return out


# ---------------------------------------------------------------------------------------
# DICOM
# ---------------------------------------------------------------------------------------


@dataclass
class DicomInfo:
    """Identifying and acquisition attributes of a DICOM image. Patient name / id are never
    copied here, so nothing downstream can log them."""

    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    modality: str = ""
    body_part: str = ""
    view_position: str = ""
    photometric: str = ""
    transfer_syntax: str = ""
    rows: int = 0
    columns: int = 0
    frames: int = 1
    samples_per_pixel: int = 1
    series_description: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _quiet_pydicom() -> None:
    # pydicom logs every lenient parse at WARNING; cxrkit reports problems itself
    logging.getLogger("pydicom").setLevel(logging.ERROR)


def _dcmread(path: Path, stop_before_pixels: bool = False) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    _quiet_pydicom()

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
            except InvalidDicomError:
                # files without the 128-byte preamble / meta header are still common;
                # accept them only if they parse into something image-like
                ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
                if not any(k in ds for k in ("SOPClassUID", "PixelData", "Rows", "Modality")):
                    raise InvalidDicomError("no DICOM elements") from None
                if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
                    from pydicom.uid import ImplicitVRLittleEndian

                    ds.file_meta = getattr(ds, "file_meta", pydicom.dataset.FileMetaDataset())
                    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
                return ds
    except InvalidDicomError:
        raise ImageReadError(path, FailureReason.NOT_DICOM, "not a DICOM file") from None
    except (EOFError, OSError) as e:
        raise ImageReadError(path, FailureReason.TRUNCATED, f"DICOM file is truncated or unreadable ({e})") from None
    except Exception as e:  # pydicom raises a variety of parse errors on corrupt headers
        raise ImageReadError(path, FailureReason.UNREADABLE, f"DICOM header cannot be parsed ({type(e).__name__}: {e})") from None


def _s(ds: Any, key: str) -> str:
    v = ds.get(key, "")
    if v is None:
        return ""
    if hasattr(v, "__iter__") and not isinstance(v, (str, bytes)):
        v = "\\".join(str(x) for x in v)
    return str(v).strip()


def dicom_info(ds: Any) -> DicomInfo:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _dicom_info(ds)


def _dicom_info(ds: Any) -> DicomInfo:
    ts = ""
    fm = getattr(ds, "file_meta", None)
    if fm is not None and "TransferSyntaxUID" in fm:
        uid = fm.TransferSyntaxUID
        ts = getattr(uid, "name", str(uid)) or str(uid)
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = -1
    try:
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        spp = -1
    return DicomInfo(
        sop_instance_uid=_s(ds, "SOPInstanceUID"),
        study_instance_uid=_s(ds, "StudyInstanceUID"),
        series_instance_uid=_s(ds, "SeriesInstanceUID"),
        modality=_s(ds, "Modality").upper(),
        body_part=_s(ds, "BodyPartExamined").upper(),
        view_position=_s(ds, "ViewPosition").upper(),
        photometric=_s(ds, "PhotometricInterpretation").upper(),
        transfer_syntax=ts,
        rows=_int(ds.get("Rows", 0)),
        columns=_int(ds.get("Columns", 0)),
        frames=frames,
        samples_per_pixel=spp,
        series_description=_s(ds, "SeriesDescription"),
    )


def _int(v: Any) -> int:
    try:
        return int(v or 0)
    except (TypeError, ValueError):
        return 0


def read_dicom_info(path: str | Path) -> DicomInfo:
    """Header only (no pixel decoding): for filtering large folders quickly."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, FailureReason.MISSING, "file not found")
    return dicom_info(_dcmread(p, stop_before_pixels=True))


def check_dicom_image(ds: Any, path: str | Path, info: DicomInfo | None = None) -> DicomInfo:
    """Raise the typed error for DICOM that cxrkit cannot use as a radiograph."""
    info = info or dicom_info(ds)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        what = info.modality or "object"
        raise ImageReadError(path, FailureReason.NON_IMAGE, f"DICOM {what} has no pixel data (not an image)")
    if info.frames < 0 or info.samples_per_pixel < 0:
        raise ImageReadError(path, FailureReason.UNREADABLE, "DICOM header has invalid NumberOfFrames / SamplesPerPixel")
    if info.samples_per_pixel != 1 or (info.photometric and info.photometric not in MONOCHROME):
        raise ImageReadError(
            path, FailureReason.COLOUR,
            f"colour DICOM ({info.photometric or 'SamplesPerPixel=' + str(info.samples_per_pixel)}); "
            "chest radiographs must be MONOCHROME1 or MONOCHROME2",
        )
    if info.frames > 1:
        raise ImageReadError(path, FailureReason.MULTI_FRAME, f"multi-frame DICOM ({info.frames} frames); expected one radiograph")
    if info.rows <= 0 or info.columns <= 0:
        raise ImageReadError(path, FailureReason.UNREADABLE, "DICOM header lacks Rows / Columns")
    check_declared_size(path, info.columns, info.rows, max(1, info.frames))
    _check_pixel_length(ds, path, info)
    return info


def _check_pixel_length(ds: Any, path: str | Path, info: DicomInfo) -> None:
    """Native (uncompressed) pixel data must be as long as Rows x Columns x frames x samples x
    bits say: shorter, or declared longer than the file, is ``truncated``; longer is
    ``unexpected_pixel_length`` (Rows / Columns do not describe the data)."""
    try:
        raw = ds.get_item("PixelData")
    except Exception:
        return
    if raw is None:
        return
    declared = getattr(raw, "length", None)
    value = getattr(raw, "value", None)
    if declared is None or declared == 0xFFFFFFFF:  # encapsulated (compressed): the decoder checks
        return
    if value is not None and isinstance(value, (bytes, bytearray)) and len(value) < declared:
        raise ImageReadError(path, FailureReason.TRUNCATED,
                             f"PixelData declares {declared} bytes but the file holds only {len(value)}")
    tell = getattr(raw, "value_tell", None)
    if tell is not None and isinstance(path, (str, Path)) and Path(path).is_file():
        size = Path(path).stat().st_size
        if tell + declared > size:
            raise ImageReadError(path, FailureReason.TRUNCATED,
                                 f"PixelData declares {declared} bytes, more than the file holds")
    fm = getattr(ds, "file_meta", None)
    ts = getattr(fm, "TransferSyntaxUID", None) if fm is not None else None
    if ts is not None and getattr(ts, "is_compressed", False):
        return
    bits = _int(ds.get("BitsAllocated", 0))
    if bits <= 0:
        return
    n = info.rows * info.columns * max(1, info.frames) * max(1, info.samples_per_pixel)
    expected = (n + 7) // 8 if bits == 1 else n * ((bits + 7) // 8)
    if declared < expected:
        raise ImageReadError(path, FailureReason.TRUNCATED,
                             f"PixelData holds {declared} bytes; Rows x Columns x frames need {expected}")
    if declared > expected + (expected % 2) + 1:
        raise ImageReadError(path, FailureReason.UNEXPECTED_PIXEL_LENGTH,
                             f"PixelData holds {declared} bytes but {info.rows} x {info.columns}"
                             + (f" x {info.frames} frames" if info.frames > 1 else "") + f" need {expected}")


def _decode(ds: Any, path: Path, info: DicomInfo) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except NotImplementedError as e:
        raise ImageReadError(path, FailureReason.UNSUPPORTED_TRANSFER_SYNTAX,
                             f"no decoder for transfer syntax {info.transfer_syntax or '?'} ({_first_line(e)})") from None
    except RuntimeError as e:
        msg = str(e)
        if "missing" in msg or "no pixel data decoders" in msg.lower() or "install" in msg.lower():
            raise ImageReadError(
                path, FailureReason.UNSUPPORTED_TRANSFER_SYNTAX,
                f"cannot decode {info.transfer_syntax or 'this transfer syntax'}: a decoder plugin is missing "
                "(pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle)",
            ) from None
        raise ImageReadError(path, FailureReason.UNREADABLE,
                             f"{info.transfer_syntax or 'pixel data'} could not be decoded (corrupt data?)") from None
    except ValueError as e:
        msg = str(e)
        if "less than expected" in msg or "truncat" in msg.lower() or "end of" in msg.lower():
            raise ImageReadError(path, FailureReason.TRUNCATED, "pixel data is shorter than the header says (truncated file)") from None
        raise ImageReadError(path, FailureReason.UNREADABLE, f"pixel data cannot be decoded ({_first_line(e)})") from None
    except (AttributeError, KeyError, TypeError, EOFError, OSError) as e:
        raise ImageReadError(path, FailureReason.UNREADABLE, f"pixel data cannot be decoded ({_first_line(e)})") from None
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise ImageReadError(path, FailureReason.MULTI_FRAME if arr.ndim == 3 else FailureReason.UNREADABLE,
                             f"decoded pixel array has shape {arr.shape}; expected one 2-D frame")
    return arr


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


def _voi_range(ds: Any) -> tuple[float, float]:
    """Output range pydicom's windowing maps to (PS3.3 C.11.2.1.2), so it can be rescaled to [0, 1]."""
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)) or 16)
    if ds.get("ModalityLUTSequence"):
        depth = int(ds.ModalityLUTSequence[0].LUTDescriptor[2])
        y_min, y_max = 0.0, float(2**depth - 1)
    elif int(ds.get("PixelRepresentation", 0) or 0) == 0:
        y_min, y_max = 0.0, float(2**bits - 1)
    else:
        y_min, y_max = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope", None), ds.get("RescaleIntercept", None)
    if slope is not None and intercept is not None:
        y_min, y_max = y_min * float(slope) + float(intercept), y_max * float(slope) + float(intercept)
    return min(y_min, y_max), max(y_min, y_max)


def _window_params(ds: Any) -> tuple[float, float, str]:
    def first(v: Any) -> float:
        return float(v[0]) if hasattr(v, "__iter__") and not isinstance(v, (str, bytes)) else float(v)

    return first(ds.WindowCenter), first(ds.WindowWidth), str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()


def apply_dicom_pipeline(arr: np.ndarray, ds: Any, path: str | Path = "<dataset>") -> tuple[np.ndarray, str]:
    """Stored values -> Modality LUT / rescale -> VOI LUT or window -> [0, 1] -> MONOCHROME1
    inversion. Returns the image (float32) and a short description of the VOI step used.

    pydicom applies the modality LUT / rescale, VOI LUT sequences and LINEAR_EXACT / SIGMOID
    windows; the common LINEAR window (PS3.3 C.11.2.1.2.1) is computed directly in float32:
    clip(((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1), the same values without float64 copies."""
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x: np.ndarray = arr
        if ds.get("ModalityLUTSequence") or "RescaleSlope" in ds or "RescaleIntercept" in ds:
            try:
                x = apply_modality_lut(arr, ds)
            except Exception as e:  # malformed LUT / rescale values
                raise ImageReadError(path, FailureReason.UNREADABLE,
                                     f"invalid Modality LUT / rescale ({_first_line(e)})") from None
        out: np.ndarray | None = None
        voi = "minmax"
        try:
            if ds.get("VOILUTSequence"):
                item = ds.VOILUTSequence[0]
                lut = np.asarray(item.LUTData if hasattr(item, "LUTData") else [], dtype=np.float64)
                y = apply_voi(np.asarray(x, dtype=np.float64), ds, index=0)
                lo, hi = (float(lut.min()), float(lut.max())) if lut.size else (float(y.min()), float(y.max()))
                if hi > lo:
                    out, voi = ((y - lo) / (hi - lo)).astype(np.float32), "voi-lut"
            elif "WindowCenter" in ds and "WindowWidth" in ds:
                c, w, func = _window_params(ds)
                if func == "LINEAR" and w >= 1:
                    out = x.astype(np.float32)
                    out -= np.float32(c - 0.5)
                    out *= np.float32(1.0 / (w - 1)) if w > 1 else np.float32(np.inf)
                    out += np.float32(0.5)
                    np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
                    voi = "window"
                elif func != "LINEAR":
                    y = apply_windowing(np.asarray(x, dtype=np.float64), ds, index=0)
                    lo, hi = _voi_range(ds)
                    if hi > lo:
                        out, voi = ((y - lo) / (hi - lo)).astype(np.float32), "window"
        except Exception as e:  # e.g. width < 1, bad LUT descriptor: fall back to min-max
            log.debug("%s: VOI step skipped (%s)", path, e)
            out, voi = None, "minmax"
        if out is None:
            out = _minmax(x, path)
    np.clip(out, 0.0, 1.0, out=out)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        np.subtract(np.float32(1.0), out, out=out)
    if float(out.max()) <= float(out.min()):
        raise ImageReadError(path, FailureReason.EMPTY, "image is constant after windowing (no contrast)")
    check_content(out, path)
    return out, voi


JPEG_BASELINE = "1.2.840.10008.1.2.4.50"


def _decode_dicom_jpeg_scaled(ds: Any, info: DicomInfo, min_hw: tuple[int, int]) -> np.ndarray | None:
    """A JPEG-baseline (8-bit, one grey frame) DICOM's stored values decoded inside
    libjpeg-turbo at the smallest M/8 scale that keeps ``min_hw`` (as JPEG files are, see
    :func:`_decode_jpeg_scaled`); the pixel pipeline that follows (rescale, VOI window,
    MONOCHROME1) is pointwise, so it applies unchanged. None: not such a file, or no
    reduction possible: the caller decodes in full."""
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if (not reduced_decode_enabled() or ts != JPEG_BASELINE or info.frames != 1
            or _int(ds.get("SamplesPerPixel", 1)) != 1 or _int(ds.get("BitsAllocated", 8)) != 8):
        return None
    import simplejpeg
    from pydicom.encaps import generate_frames

    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        h, w, colorspace, _ = simplejpeg.decode_jpeg_header(frame)
    except Exception:  # not a readable encapsulated JPEG: the full decoder reports it
        return None
    if (h, w) != (info.rows, info.columns) or str(colorspace).lower() != "gray":
        return None
    arr = _decode_jpeg_scaled(np.frombuffer(frame, np.uint8), Path("<dicom frame>"), min_hw)
    return None if arr is None or arr.ndim != 2 else arr


def decode_dicom(ds: Any, path: Path, info: DicomInfo, min_hw: tuple[int, int] | None = None) -> np.ndarray:
    """The stored values of one checked DICOM image; a JPEG-baseline frame at a reduced
    scale when ``min_hw`` allows it."""
    if min_hw is not None:
        arr = _decode_dicom_jpeg_scaled(ds, info, min_hw)
        if arr is not None:
            return arr
    return _decode(ds, path, info)


def read_dicom(path: str | Path, min_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, DicomInfo]:
    """Read one DICOM radiograph through the full pixel pipeline -> ([0, 1] float32, info).
    ``min_hw``: the smallest size the caller needs (a JPEG-baseline frame may then be
    decoded at a reduced scale, see :func:`decode_dicom`)."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(p, FailureReason.MISSING, "file not found")
    ds = _dcmread(p)
    info = check_dicom_image(ds, p)
    arr = decode_dicom(ds, p, info, min_hw)
    img, _ = apply_dicom_pipeline(arr, ds, p)
    return img, info
