"""Typed exceptions. Every message is one sentence a user can act on.

The CLI turns any :class:`CxrkitError` into a one-line message and a non-zero exit;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path


_NUMPY_REPR = re.compile(r"np\.(?:float|int|uint|bool|str)\w*\(([^()]*)\)")


class CxrkitError(Exception):
    """Base class of every error cxrkit raises on purpose. Messages never show NumPy reprs
    (``np.float64(2.0)`` reads ``2.0``)."""

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str):
            args = (_NUMPY_REPR.sub(r"\1", args[0]), *args[1:])
        super().__init__(*args)


class ConfigError(CxrkitError, ValueError):
    """A configuration value or command-line option is invalid."""


class TableFormatError(CxrkitError, ValueError):
    """A label table does not follow its format (missing column, bad value, duplicate id...)."""


class ArtifactError(CxrkitError):
    """A saved model / ensemble artifact is missing, incomplete or inconsistent."""


class FailureReason(str, enum.Enum):
    """Why an input could not be used. Written into failure / skip files."""

    MISSING = "missing"  # path does not exist
    UNREADABLE = "unreadable"  # exists but cannot be read or decoded as an image
    NOT_DICOM = "not_dicom"  # looked like DICOM (extension) but is not
    NON_IMAGE = "non_image"  # DICOM without pixel data (SR, RT plan, ...)
    COLOUR = "colour"  # RGB / YBR / palette colour DICOM
    MULTI_FRAME = "multi_frame"  # more than one frame
    TRUNCATED = "truncated"  # pixel data shorter than the header says
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"  # no decoder available
    EMPTY = "empty"  # zero-sized or constant image
    NOT_CHEST_RADIOGRAPH = "not_chest_radiograph"  # modality / body part filter
    VIEW_EXCLUDED = "view_excluded"  # view filter
    DUPLICATE = "duplicate"  # same SOP instance seen before
    TOO_LARGE = "too_large"  # declared size above the pixel limit (decompression bombs)
    TOO_SMALL = "too_small"  # shorter side below the minimum size
    UNEXPECTED_PIXEL_LENGTH = "unexpected_pixel_length"  # DICOM pixel data longer than Rows x Columns says
    SYMLINK_LOOP = "symlink_loop"  # a symlinked folder that leads back into a folder being walked
    INVALID_UID = "invalid_uid"  # a DICOM UID that breaks the UID grammar (and would make a bad file name)


class ImageReadError(CxrkitError):
    """An image could not be read. Carries the file and a :class:`FailureReason`."""

    def __init__(self, path: str | Path, reason: FailureReason, detail: str) -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {detail} [{reason.value}]")
