"""cxrkit: long-tailed, multi-label chest X-ray classification with uncertain and missing labels."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cxrkit")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
