"""Label spaces, the one internal label encoding, uncertainty and unknown-label policies.

Encoding used everywhere inside cxrkit (SPEC section 1)::

    1.0  positive        0.0  negative        -1.0  uncertain        NaN  unknown

Formats with other conventions are converted when a table is read
(:mod:`cxrkit.data.tables`). *Targets* handed to a loss are derived from labels by a
:class:`LabelPolicy`: uncertain labels are mapped by an :class:`UncertaintyPolicy`
(globally or per category), unknown labels become 0 (assume negative) or stay NaN
(ignored; losses mask NaN targets).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError

POSITIVE = 1.0
NEGATIVE = 0.0
UNCERTAIN = -1.0
UNKNOWN = float("nan")

# ---------------------------------------------------------------------------------------
# Label spaces as data
# ---------------------------------------------------------------------------------------

#: CheXpert's 14 observations, in the column order of the official CSV.
CHEXPERT_14: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

#: The 5 observations the CheXpert competition scores (mean AUC).
CHEXPERT_COMPETITION_5: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Pleural Effusion",
)

#: NIH ChestX-ray14 findings, spelled as in ``Data_Entry_2017`` (``Finding Labels``).
NIH_14: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)

#: CXR-LT 2023 (MIMIC-CXR-LT), 26 classes.
CXR_LT_26: tuple[str, ...] = (
    "Atelectasis",
    "Calcification of the Aorta",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged Cardiomediastinum",
    "Fibrosis",
    "Fracture",
    "Hernia",
    "Infiltration",
    "Lung Lesion",
    "Lung Opacity",
    "Mass",
    "No Finding",
    "Nodule",
    "Pleural Effusion",
    "Pleural Other",
    "Pleural Thickening",
    "Pneumomediastinum",
    "Pneumonia",
    "Pneumoperitoneum",
    "Pneumothorax",
    "Subcutaneous Emphysema",
    "Support Devices",
    "Tortuous Aorta",
)

#: MS-COCO's 80 categories in ascending category-id order.
COCO_80: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
    "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
    "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
    "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair",
    "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse",
    "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)  # fmt: skip


@dataclass(frozen=True)
class LabelSpace:
    """A named, ordered list of classes, with optional named subsets (e.g. the CheXpert 5)."""

    name: str
    classes: tuple[str, ...]
    subsets: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.classes:
            raise ConfigError(f"label space {self.name!r} has no classes")
        dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if dup:
            raise ConfigError(f"label space {self.name!r} repeats class names: {dup}")
        for sub, names in self.subsets.items():
            missing = [n for n in names if n not in self.classes]
            if missing:
                raise ConfigError(f"subset {sub!r} of {self.name!r} names unknown classes {missing}")

    def __len__(self) -> int:
        return len(self.classes)

    def index(self, names: Iterable[str]) -> list[int]:
        """Column indices of ``names``; a clear error for a name not in the space."""
        pos = {c: i for i, c in enumerate(self.classes)}
        out = []
        for n in names:
            if n not in pos:
                raise ConfigError(f"class {n!r} is not in label space {self.name!r} ({len(self)} classes)")
            out.append(pos[n])
        return out

    def subset(self, name: str) -> tuple[str, ...]:
        if name not in self.subsets:
            raise ConfigError(f"label space {self.name!r} has no subset {name!r}; has {sorted(self.subsets)}")
        return self.subsets[name]


#: CXR-LT 2026 (ISBI 2026; PadChest + NIH ChestX-ray14), task 1: the 30 known classes, as
#: the submission header names and orders them (PadChest's own lowercase finding names
#: beside capitalised merged ones). Source: the task-1 winners' public code
#: (github.com/hieuphamha19/CXR_LT, Task1_Long_tailed/ensemble_inference.py, "MUST match
#: training order"); check it against the organisers' sample submission, which
#: ``cxrkit-submit cxr-lt --sample-submission`` follows whatever it says.
CXR_LT_2026_TASK1: tuple[str, ...] = (
    "Normal", "aortic elongation", "cardiomegaly", "pleural effusion", "Nodule", "atelectasis",
    "pleural thickening", "aortic atheromatosis", "Support Devices", "alveolar pattern", "fracture", "Hernia",
    "Emphysema", "azygos lobe", "Hydropneumothorax", "Kyphosis", "Mass", "Pneumothorax", "Subcutaneous Emphysema",
    "pneumoperitoneo", "vascular hilar enlargement", "vertebral degenerative changes", "hyperinflated lung",
    "interstitial pattern", "central venous catheter", "hypoexpansion", "bronchiectasis", "hemidiaphragm elevation",
    "sternotomy", "calcified densities",
)
#: CXR-LT 2026 task 2: the six unseen (zero-shot) classes (same source, Task2_Zero_shot).
CXR_LT_2026_TASK2: tuple[str, ...] = ("Scoliosis", "Osteopenia", "Bulla", "Infarction", "Adenopathy", "goiter")


LABEL_SPACES: dict[str, LabelSpace] = {}


def register_label_space(space: LabelSpace, *aliases: str) -> LabelSpace:
    for key in (space.name, *aliases):
        LABEL_SPACES[key.lower()] = space
    return space


register_label_space(
    LabelSpace("chexpert", CHEXPERT_14, {"competition": CHEXPERT_COMPETITION_5}), "chexpert14"
)
register_label_space(LabelSpace("chexpert5", CHEXPERT_COMPETITION_5, {"competition": CHEXPERT_COMPETITION_5}))
register_label_space(LabelSpace("nih", NIH_14), "nih14", "chestx-ray14")
register_label_space(LabelSpace("cxr-lt", CXR_LT_26), "cxrlt", "cxr-lt-2023", "mimic-cxr-lt")
register_label_space(LabelSpace("cxr-lt-2026", CXR_LT_2026_TASK1), "cxrlt2026", "cxr-lt-2026-task1")
register_label_space(LabelSpace("coco", COCO_80), "coco80", "mscoco")


def get_label_space(spec: str | Sequence[str] | LabelSpace) -> LabelSpace:
    """Turn a name (``chexpert``, ``nih``, ``cxr-lt``, ``coco`` ...), a comma-separated list,
    a path to a text file with one class per line, or a list of names into a :class:`LabelSpace`."""
    if isinstance(spec, LabelSpace):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in LABEL_SPACES:
            return LABEL_SPACES[key]
        p = Path(spec)
        if p.suffix in {".txt", ".csv"} and p.is_file():
            names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
            return LabelSpace(p.stem, tuple(names))
        if "," in spec:
            return LabelSpace("custom", tuple(s.strip() for s in spec.split(",") if s.strip()))
        raise ConfigError(
            f"unknown label space {spec!r}; use one of {sorted(set(s.name for s in LABEL_SPACES.values()))}, "
            "a comma-separated list of class names, or a .txt file with one class per line"
        )
    return LabelSpace("custom", tuple(str(s) for s in spec))


# ---------------------------------------------------------------------------------------
# Policies
# ---------------------------------------------------------------------------------------

#: U-Ones+LSR draws uncertain targets uniformly from this range (Pham et al. 2021, seed 000).
ONES_LSR_RANGE = (0.55, 0.85)
#: U-Zeros+LSR range.
ZEROS_LSR_RANGE = (0.0, 0.30)


class UncertaintyPolicy(str, enum.Enum):
    """How an uncertain (-1) label becomes a training target."""

    IGNORE = "ignore"  # U-Ignore: -> unknown (masked)
    ONES = "ones"  # U-Ones: -> 1
    ZEROS = "zeros"  # U-Zeros: -> 0
    ONES_LSR = "ones-lsr"  # U-Ones+LSR: -> U(0.55, 0.85), redrawn every time targets are made
    ZEROS_LSR = "zeros-lsr"  # U-Zeros+LSR: -> U(0, 0.30)

    @classmethod
    def parse(cls, value: str | UncertaintyPolicy) -> UncertaintyPolicy:
        if isinstance(value, UncertaintyPolicy):
            return value
        key = str(value).strip().lower().replace("_", "-").replace("+", "-").replace(" ", "")
        if key.startswith("u-"):
            key = key[2:]
        aliases = {"unknown": "ignore", "mask": "ignore", "one": "ones", "zero": "zeros",
                   "ones-lsr": "ones-lsr", "zeros-lsr": "zeros-lsr", "onelsr": "ones-lsr"}
        key = aliases.get(key, key)
        try:
            return cls(key)
        except ValueError:
            raise ConfigError(
                f"unknown uncertainty policy {value!r}; use one of {[p.value for p in cls]}"
            ) from None


class UnknownPolicy(str, enum.Enum):
    """How an unknown (NaN) label is treated."""

    IGNORE = "ignore"  # masked out of the loss
    NEGATIVE = "negative"  # Assume Negative (AN)

    @classmethod
    def parse(cls, value: str | UnknownPolicy) -> UnknownPolicy:
        if isinstance(value, UnknownPolicy):
            return value
        key = str(value).strip().lower().replace("_", "-")
        aliases = {"mask": "ignore", "an": "negative", "assume-negative": "negative", "zeros": "negative",
                   "zero": "negative"}
        key = aliases.get(key, key)
        try:
            return cls(key)
        except ValueError:
            raise ConfigError(f"unknown unknown-label policy {value!r}; use 'ignore' or 'negative'") from None


@dataclass
class LabelPolicy:
    """Uncertainty policy (global default + per-class overrides) and unknown handling.

    Example, LibAUC's CheXpert recipe::

        LabelPolicy(uncertain="zeros", per_class={"Edema": "ones", "Atelectasis": "ones"})
    """

    uncertain: UncertaintyPolicy | str = UncertaintyPolicy.IGNORE
    per_class: dict[str, UncertaintyPolicy | str] = field(default_factory=dict)
    unknown: UnknownPolicy | str = UnknownPolicy.IGNORE

    def __post_init__(self) -> None:
        self.uncertain = UncertaintyPolicy.parse(self.uncertain)
        self.unknown = UnknownPolicy.parse(self.unknown)
        self.per_class = {str(k): UncertaintyPolicy.parse(v) for k, v in dict(self.per_class).items()}

    def resolve(self, classes: Sequence[str]) -> list[UncertaintyPolicy]:
        """The policy of every class, in order. Unknown class names in ``per_class`` are an error."""
        missing = [k for k in self.per_class if k not in classes]
        if missing:
            raise ConfigError(f"uncertainty policy names classes that are not in the label space: {missing}")
        return [self.per_class.get(c, self.uncertain) for c in classes]  # type: ignore[misc]

    def targets(self, labels: np.ndarray, classes: Sequence[str], rng: np.random.Generator | None = None) -> np.ndarray:
        """Training targets from labels (N x C, 1/0/-1/NaN): floats in [0, 1], NaN = masked."""
        out = apply_uncertainty(labels, self.resolve(classes), rng)
        if self.unknown is UnknownPolicy.NEGATIVE:
            out = np.where(np.isnan(labels), np.float32(0.0), out).astype(np.float32)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "uncertain": UncertaintyPolicy.parse(self.uncertain).value,
            "per_class": {k: UncertaintyPolicy.parse(v).value for k, v in self.per_class.items()},
            "unknown": UnknownPolicy.parse(self.unknown).value,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> LabelPolicy:
        d = dict(d or {})
        unknown_keys = set(d) - {"uncertain", "per_class", "unknown"}
        if unknown_keys:
            raise ConfigError(f"unknown label-policy keys {sorted(unknown_keys)}; use uncertain, per_class, unknown")
        return cls(**d)


def apply_uncertainty(
    labels: np.ndarray,
    policies: UncertaintyPolicy | str | Sequence[UncertaintyPolicy | str],
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Map uncertain (-1) entries of ``labels`` (N x C) by one policy or one per column.

    Returns a new float32 array; positives, negatives and unknowns are unchanged. LSR
    policies draw a fresh uniform value for every uncertain entry on every call, so calling
    once per epoch gives the "redrawn per sample per epoch" behaviour of the seeds.
    """
    labels = np.asarray(labels, dtype=np.float32)
    if labels.ndim != 2:
        raise ValueError(f"labels must be N x C, got shape {labels.shape}")
    n_cls = labels.shape[1]
    if isinstance(policies, (str, UncertaintyPolicy)):
        pols = [UncertaintyPolicy.parse(policies)] * n_cls
    else:
        pols = [UncertaintyPolicy.parse(p) for p in policies]
        if len(pols) != n_cls:
            raise ValueError(f"{len(pols)} policies for {n_cls} columns")
    out = labels.copy()
    unc = labels == UNCERTAIN
    if not unc.any():
        return out
    rng = rng if rng is not None else np.random.default_rng()
    for pol in set(pols):
        cols = np.array([p is pol for p in pols])
        sel = unc & cols[None, :]
        if not sel.any():
            continue
        if pol is UncertaintyPolicy.IGNORE:
            out[sel] = np.nan
        elif pol is UncertaintyPolicy.ONES:
            out[sel] = 1.0
        elif pol is UncertaintyPolicy.ZEROS:
            out[sel] = 0.0
        else:
            lo, hi = ONES_LSR_RANGE if pol is UncertaintyPolicy.ONES_LSR else ZEROS_LSR_RANGE
            out[sel] = rng.uniform(lo, hi, size=int(sel.sum())).astype(np.float32)
    return out


def check_encoding(labels: np.ndarray) -> None:
    """Raise ValueError if ``labels`` holds anything but 1 / 0 / -1 / NaN."""
    arr = np.asarray(labels)
    bad = ~(np.isnan(arr) | (arr == 1) | (arr == 0) | (arr == -1))
    if bad.any():
        vals = np.unique(arr[bad])[:5]
        raise ValueError(f"labels must be 1/0/-1/NaN; found {vals.tolist()}")


# ---------------------------------------------------------------------------------------
# Frequency groups
# ---------------------------------------------------------------------------------------


def frequency_groups(counts: Sequence[float] | np.ndarray, n_groups: int) -> np.ndarray:
    """Group index (0 = fewest) of each class by ``counts``, as Open Images' G1..G5: classes
    sorted ascending, class at rank r in group floor(r * n_groups / n). Ties fall in one group
    (a tied class takes the rank of the first of its ties), so equal counts are never split."""
    counts = np.asarray(counts, dtype=np.float64)
    n = len(counts)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(counts, kind="stable")
    sorted_c = counts[order]
    first = np.searchsorted(sorted_c, sorted_c, side="left")  # rank of the first tie
    groups = np.empty(n, dtype=np.int64)
    groups[order] = (first * n_groups) // n
    return groups


HEAD_MEDIUM_TAIL = ("head", "medium", "tail")
UNDEFINED_GROUP = "undefined"


def head_medium_tail(
    positives: Sequence[float] | np.ndarray,
    head_min: float | None = None,
    tail_max: float | None = None,
) -> list[str]:
    """``head`` / ``medium`` / ``tail`` for each class by its number of positives; a class
    without positives is ``undefined`` (it belongs to no frequency group).

    With thresholds: head if positives >= ``head_min``, tail if positives <= ``tail_max``,
    medium otherwise. Without: terciles of the classes with positives, sorted by positives
    (most frequent third = head), ties kept in one group (:func:`frequency_groups`).
    """
    pos = np.asarray(positives, dtype=np.float64)
    out = [UNDEFINED_GROUP] * len(pos)
    has = np.flatnonzero(pos > 0)
    if head_min is not None or tail_max is not None:
        hi = np.inf if head_min is None else head_min
        lo = -np.inf if tail_max is None else tail_max
        for i in has:
            out[i] = "head" if pos[i] >= hi else "tail" if pos[i] <= lo else "medium"
        return out
    g = frequency_groups(pos[has], 3)  # 0 fewest -> tail
    for i, k in zip(has, g):
        out[i] = HEAD_MEDIUM_TAIL[2 - int(k)]
    return out


def subsets_for(classes: Sequence[str], label_space: str | None = None) -> dict[str, list[str]]:
    """Named class subsets (e.g. CheXpert's 5 competition classes) whose classes are all in
    ``classes``: from ``label_space`` when given, else from the first built-in space that has
    a matching subset."""
    names = [label_space] if label_space else ["chexpert", "cxr-lt", "nih", "coco"]
    for name in names:
        try:
            space = get_label_space(name)
        except ConfigError:
            continue
        subs = {k: list(v) for k, v in space.subsets.items() if all(c in classes for c in v)}
        if subs:
            return subs
    return {}
