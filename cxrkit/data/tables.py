"""Label tables: read the real formats unchanged into one :class:`LabelTable`.

Formats (SPEC section 2): CheXpert CSV, NIH ``Data_Entry_2017``, CXR-LT CSV, COCO
``instances_*.json``, Open Images V3 human-verified labels CSV, and cxrkit's own generic
CSV (an id/path column + one column per class with 1 / 0 / -1 / blank). ``load_table``
detects the format from the columns, or takes it explicitly.

Every table is converted to the internal encoding (1 / 0 / -1 / NaN) at this boundary.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import TableFormatError
from ..labels import CHEXPERT_14, COCO_80, CXR_LT_26, NIH_14, head_medium_tail

log = logging.getLogger(__name__)

FORMATS = ("chexpert", "nih", "cxr-lt", "padchest", "coco", "openimages", "generic")

#: Column names recognised as the id / image path of a generic table, in order of preference.
GENERIC_ID_COLUMNS = ("Path", "path", "id", "image", "image_id", "ImageID", "Image Index", "dicom_id",
                      "filename", "file", "file_name")
#: Columns of a generic table that are metadata, not classes (besides ``meta.*``).
GENERIC_META_COLUMNS = {"split", "study", "patient", "view", "sex", "age", "Sex", "Age", "Frontal/Lateral",
                        "AP/PA", "View Position", "ViewPosition", "Patient ID", "subject_id", "study_id",
                        "fold", "Study", "Patient Age", "Patient Gender", "Follow-up #"}


@dataclass
class LabelTable:
    """Labels of N images over C classes in the internal encoding.

    ``ids`` are unique keys (CheXpert path, NIH image index, COCO file name...), ``paths``
    the image paths relative to an images root (often equal to ``ids``), ``labels`` an
    N x C float array of 1 / 0 / -1 / NaN, ``meta`` per-image metadata aligned with the rows:
    ``study``, ``patient``, ``view`` (PA / AP / LATERAL / LL / ... or empty), ``split`` when known.
    """

    ids: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    format: str
    paths: np.ndarray | None = None
    meta: pd.DataFrame = field(default_factory=pd.DataFrame)
    source: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = np.asarray(self.ids, dtype=object)
        if self.paths is None:
            self.paths = self.ids
        self.paths = np.asarray(self.paths, dtype=object)
        self.labels = np.asarray(self.labels)
        if self.labels.dtype not in (np.float32, np.float16):
            self.labels = self.labels.astype(np.float32)
        self.classes = tuple(self.classes)
        n = len(self.ids)
        if self.labels.shape != (n, len(self.classes)):
            raise ValueError(f"labels shape {self.labels.shape} != ({n}, {len(self.classes)})")
        if len(self.paths) != n:
            raise ValueError("paths and ids differ in length")
        if self.meta is None or len(self.meta.columns) == 0:
            self.meta = pd.DataFrame(index=pd.RangeIndex(n))
        self.meta = self.meta.reset_index(drop=True)
        if len(self.meta) != n:
            raise ValueError("meta and ids differ in length")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def root(self) -> Path | None:
        """Folder the table was read from (first guess for the images root)."""
        return self.source.parent if self.source is not None else None

    def counts(self) -> dict[str, np.ndarray]:
        """Per-class counts of positive / negative / uncertain / unknown labels."""
        lab = self.labels
        return {
            "positive": (lab == 1).sum(0).astype(np.int64),
            "negative": (lab == 0).sum(0).astype(np.int64),
            "uncertain": (lab == -1).sum(0).astype(np.int64),
            "unknown": np.isnan(lab).sum(0).astype(np.int64),
        }

    def select(self, rows: np.ndarray | Sequence[int] | Sequence[bool]) -> LabelTable:
        """A new table with the given rows (boolean mask or integer indices)."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return LabelTable(
            ids=self.ids[rows],
            labels=self.labels[rows],
            classes=self.classes,
            format=self.format,
            paths=self.paths[rows],
            meta=self.meta.iloc[rows].reset_index(drop=True),
            source=self.source,
            extra=dict(self.extra),
        )

    def select_classes(self, names: Sequence[str]) -> LabelTable:
        pos = {c: i for i, c in enumerate(self.classes)}
        missing = [n for n in names if n not in pos]
        if missing:
            raise TableFormatError(f"{self.source or 'table'}: has no classes {missing}")
        cols = [pos[n] for n in names]
        return LabelTable(self.ids, self.labels[:, cols], tuple(names), self.format, self.paths, self.meta,
                          self.source, dict(self.extra))

    def split(self, name: str) -> LabelTable:
        """Rows whose ``split`` column equals ``name`` (e.g. NIH1000's train / valid)."""
        if "split" not in self.meta.columns:
            raise TableFormatError(f"{self.source or 'table'}: has no 'split' column")
        mask = (self.meta["split"].astype(str) == name).to_numpy()
        if not mask.any():
            have = sorted(self.meta["split"].astype(str).unique().tolist())
            raise TableFormatError(f"{self.source or 'table'}: no rows with split {name!r}; splits are {have}")
        return self.select(mask)

    def to_csv(self, path: str | Path) -> Path:
        """Write cxrkit's generic CSV (``Path`` + one column per class, blank = unknown,
        metadata as ``meta.<name>``), atomically. ``load_table`` reads it back unchanged."""
        from ..utils import atomic_write

        df = pd.DataFrame({"Path": self.paths})
        if not np.array_equal(self.paths, self.ids):
            df["meta.id"] = self.ids
        lab = pd.DataFrame(self.labels.astype(np.float32), columns=list(self.classes))
        df = pd.concat([df, lab], axis=1)
        for col in self.meta.columns:
            df[f"meta.{col}"] = self.meta[col].to_numpy()
        with atomic_write(path) as tmp:
            df.to_csv(tmp, index=False, float_format="%.1f")
        return Path(path)


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _err(source: Path | str, msg: str) -> TableFormatError:
    return TableFormatError(f"{source}: {msg}")


def _read_csv(path: Path, **kw: Any) -> pd.DataFrame:
    if not path.exists():
        raise TableFormatError(f"{path}: file not found")
    if path.is_dir():
        raise TableFormatError(f"{path}: is a folder, expected a label table (CSV or COCO JSON)")
    try:
        return pd.read_csv(path, **kw)
    except pd.errors.EmptyDataError:
        raise _err(path, "file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, EOFError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _err(path, f"not a readable CSV table ({first})") from None


def _require(df: pd.DataFrame, cols: Sequence[str], source: Path, fmt: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise _err(source, f"{fmt} table is missing column(s) {missing}")


def _check_unique(ids: pd.Series, source: Path, what: str) -> None:
    dup = ids.duplicated(keep="first")
    if dup.any():
        rows = np.flatnonzero(dup.to_numpy())[:3]
        examples = ", ".join(f"{ids.iloc[r]!r} (line {r + 2})" for r in rows)
        raise _err(source, f"{int(dup.sum())} duplicate {what}(s), e.g. {examples}")


def _label_block(df: pd.DataFrame, cols: Sequence[str], source: Path, allowed: Sequence[float]) -> np.ndarray:
    """Class columns -> float32 N x C, validating every value against ``allowed`` (+ blank)."""
    out = np.empty((len(df), len(cols)), dtype=np.float32)
    allowed_arr = np.asarray(allowed, dtype=np.float64)
    for j, c in enumerate(cols):
        s = df[c]
        if not pd.api.types.is_numeric_dtype(s):
            num = pd.to_numeric(s, errors="coerce")
            bad = num.isna() & s.notna() & (s.astype(str).str.strip() != "")
            if bad.any():
                r = int(np.flatnonzero(bad.to_numpy())[0])
                raise _err(source, f"column {c!r} line {r + 2}: value {s.iloc[r]!r} is not a number; "
                                   f"expected one of {_fmt_allowed(allowed)} or blank")
            s = num
        v = s.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isnan(v) & ~np.isin(v, allowed_arr)
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            raise _err(source, f"column {c!r} line {r + 2}: value {v[r]!r} is not one of "
                               f"{_fmt_allowed(allowed)} or blank")
        out[:, j] = v
    return out


def _fmt_allowed(allowed: Sequence[float]) -> str:
    return ", ".join(f"{a:.1f}" for a in allowed)


_VIEW_ALIASES = {
    "PA": "PA", "POSTEROANTERIOR": "PA", "POSTERO-ANTERIOR": "PA", "PA VIEW": "PA", "PA CHEST": "PA",
    "AP": "AP", "ANTEROPOSTERIOR": "AP", "ANTERO-POSTERIOR": "AP", "AP SUPINE": "AP", "AP ERECT": "AP",
    "AP PORTABLE": "AP", "APS": "AP", "PORTABLE AP": "AP", "AP UPRIGHT": "AP", "AP SEMI-ERECT": "AP",
    "LATERAL": "LATERAL", "LAT": "LATERAL", "LL": "LL", "RL": "RL", "LLD": "LL", "RLD": "RL",
    "LEFT LATERAL": "LL", "RIGHT LATERAL": "RL", "LAO": "LAO", "RAO": "RAO", "LPO": "LPO", "RPO": "RPO",
    "XTABLE LATERAL": "LATERAL", "CROSS-TABLE LATERAL": "LATERAL", "SWIMMERS": "SWIMMERS",
    # PadChest's Projection: L lateral, AP_horizontal a supine AP, COSTAL a rib view (not a chest film)
    "L": "LATERAL", "AP HORIZONTAL": "AP", "COSTAL": "COSTAL",
}


def normalise_view(value: Any) -> str:
    """Normalise a view string (DICOM ``ViewPosition``, CheXpert ``AP/PA``, NIH ``View Position``)
    to PA / AP / LATERAL / LL / RL / ... ; empty string when unknown."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    s = re.sub(r"[\s_]+", " ", str(value).strip().upper())
    if not s:
        return ""
    if s in _VIEW_ALIASES:
        return _VIEW_ALIASES[s]
    compact = s.replace(" ", "").replace("-", "")
    for k, v in _VIEW_ALIASES.items():
        if compact == k.replace(" ", "").replace("-", ""):
            return v
    if "LAT" in s:
        return "LATERAL"
    if re.search(r"\bPA\b", s) or s.startswith("PA"):
        return "PA"
    if re.search(r"\bAP\b", s) or s.startswith("AP"):
        return "AP"
    return s


FRONTAL_VIEWS = ("PA", "AP")
LATERAL_VIEWS = ("LATERAL", "LL", "RL")


# ---------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------


def read_chexpert(path: str | Path, df: pd.DataFrame | None = None) -> LabelTable:
    """CheXpert ``train.csv`` / ``valid.csv``: ``Path,Sex,Age,Frontal/Lateral,AP/PA`` + the 14
    observations (1.0 / 0.0 / -1.0 / blank). Study = path up to ``studyN``; view from
    ``Frontal/Lateral`` and ``AP/PA``."""
    path = Path(path)
    df = _read_csv(path) if df is None else df
    _require(df, ["Path", *CHEXPERT_14], path, "CheXpert")
    _check_unique(df["Path"], path, "Path")
    labels = _label_block(df, CHEXPERT_14, path, (1.0, 0.0, -1.0))
    paths = df["Path"].astype(str)
    study = paths.str.extract(r"^(.*?study\d+)(?:/|$)", expand=False)
    study = study.fillna(paths.str.rsplit("/", n=1).str[0])
    patient = paths.str.extract(r"(patient\d+)", expand=False).fillna("")
    if "Frontal/Lateral" in df.columns:
        fl = df["Frontal/Lateral"].astype(str).str.strip().str.lower()
    else:
        fl = pd.Series(np.where(paths.str.contains("lateral"), "lateral", "frontal"))
    appa = df["AP/PA"] if "AP/PA" in df.columns else pd.Series([""] * len(df))
    view = np.where(fl == "lateral", "LATERAL", [normalise_view(v) for v in appa])
    meta = pd.DataFrame({"study": study.to_numpy(), "patient": patient.to_numpy(), "view": view})
    if "Sex" in df.columns:
        meta["sex"] = df["Sex"].to_numpy()
    if "Age" in df.columns:
        meta["age"] = df["Age"].to_numpy()
    return LabelTable(paths.to_numpy(dtype=object), labels, CHEXPERT_14, "chexpert", meta=meta, source=path)


def read_nih(path: str | Path, df: pd.DataFrame | None = None) -> LabelTable:
    """NIH ChestX-ray14 ``Data_Entry_2017`` style: ``Image Index``, pipe-separated
    ``Finding Labels`` (``No Finding`` when empty). All 14 labels are known (0 / 1)."""
    path = Path(path)
    df = _read_csv(path) if df is None else df
    _require(df, ["Image Index", "Finding Labels"], path, "NIH")
    _check_unique(df["Image Index"], path, "Image Index")
    fl = df["Finding Labels"].fillna("").astype(str)
    tokens = fl.str.split("|")
    known = set(NIH_14) | {"No Finding", ""}
    flat = pd.Series([t.strip() for ts in tokens for t in ts])
    bad = sorted(set(flat) - known)
    if bad:
        line = int(np.flatnonzero(fl.apply(lambda s: any(t.strip() in bad for t in s.split("|"))).to_numpy())[0]) + 2
        raise _err(path, f"'Finding Labels' line {line}: unknown finding(s) {bad[:5]}; expected {list(NIH_14)} "
                         "or 'No Finding'")
    labels = np.zeros((len(df), len(NIH_14)), dtype=np.float32)
    for j, c in enumerate(NIH_14):
        labels[:, j] = tokens.apply(lambda ts, c=c: c in ts).to_numpy()
    no_finding = (labels.sum(1) == 0)
    ids = df["Image Index"].astype(str).to_numpy(dtype=object)
    meta = pd.DataFrame({
        "study": ids,
        "patient": df["Patient ID"].astype(str).to_numpy() if "Patient ID" in df.columns else "",
        "view": [normalise_view(v) for v in df["View Position"]] if "View Position" in df.columns else "",
    })
    for c in ("split",):
        if c in df.columns:
            meta[c] = df[c].astype(str).to_numpy()
    if "Patient Age" in df.columns:
        meta["age"] = df["Patient Age"].to_numpy()
    if "Patient Gender" in df.columns:
        meta["sex"] = df["Patient Gender"].to_numpy()
    return LabelTable(ids, labels, NIH_14, "nih", meta=meta, source=path,
                      extra={"no_finding": int(no_finding.sum())})


def read_cxrlt(path: str | Path, df: pd.DataFrame | None = None) -> LabelTable:
    """CXR-LT 2023 CSV: ``dicom_id`` + 26 label columns (+ metadata such as ``subject_id``,
    ``study_id``, ``path``, ``fold``). Images are found by ``path`` when present, else by id."""
    path = Path(path)
    df = _read_csv(path) if df is None else df
    _require(df, ["dicom_id", *CXR_LT_26], path, "CXR-LT")
    _check_unique(df["dicom_id"], path, "dicom_id")
    labels = _label_block(df, CXR_LT_26, path, (1.0, 0.0, -1.0))
    ids = df["dicom_id"].astype(str).to_numpy(dtype=object)
    paths = df["path"].astype(str).to_numpy(dtype=object) if "path" in df.columns else ids
    meta = pd.DataFrame({
        "study": df["study_id"].astype(str).to_numpy() if "study_id" in df.columns else ids,
        "patient": df["subject_id"].astype(str).to_numpy() if "subject_id" in df.columns else "",
        "view": [normalise_view(v) for v in df["ViewPosition"]] if "ViewPosition" in df.columns else "",
    })
    for c in ("split", "fold"):
        if c in df.columns:
            meta[c] = df[c].astype(str).to_numpy()
    return LabelTable(ids, labels, CXR_LT_26, "cxr-lt", paths=paths, meta=meta, source=path)


#: PadChest ``Labels`` entries that are not findings: ``exclude`` marks a film the
#: annotators excluded (the row is left out), ``suboptimal study`` a technically poor one
#: (kept, flagged in ``meta["suboptimal"]``)
PADCHEST_EXCLUDE = "exclude"
PADCHEST_SUBOPTIMAL = "suboptimal study"


def _padchest_labels(value: Any, line: int, path: Path) -> list[str]:
    """One ``Labels`` cell (a Python list as text: ``['pleural effusion', 'cardiomegaly']``,
    possibly nested, possibly empty) -> its lowercase findings."""
    import ast

    if value is None or (isinstance(value, float) and np.isnan(value)) or not str(value).strip():
        return []
    try:
        parsed = ast.literal_eval(str(value).strip())
    except (ValueError, SyntaxError):
        raise _err(path, f"line {line}: 'Labels' is not a list of findings ({str(value)[:80]!r})") from None

    def flat(x: Any) -> list[str]:
        if isinstance(x, (list, tuple)):
            return [t for y in x for t in flat(y)]
        if isinstance(x, str):
            return [x]
        raise _err(path, f"line {line}: 'Labels' holds {type(x).__name__} {x!r}, not finding names")

    out = []
    for t in flat(parsed):
        t = re.sub(r"\s+", " ", t).strip().lower()
        if t and t not in out:
            out.append(t)
    return out


def read_padchest(path: str | Path, df: pd.DataFrame | None = None,
                  classes: str | Path | Sequence[str] | None = None) -> LabelTable:
    """PadChest's CSV as published (``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv``):
    ``ImageID``, ``ImageDir`` (the image's folder), ``Projection`` (PA, AP, AP_horizontal, L,
    COSTAL; mapped to views), ``PatientID``, ``StudyID``, ``MethodLabel`` and ``Labels``, a
    Python list as text of lowercase findings (``['pleural effusion', 'cardiomegaly']``).
    Every listed finding is positive, every other class negative (PadChest labels are all
    known); ``normal`` is a class like the others; rows labelled ``exclude`` are left out
    (counted in ``extra["excluded"]``), ``suboptimal study`` is a flag, not a class. The
    classes are every finding of the table, most frequent first, or ``classes`` (a list or
    a file with one per line, matched case-insensitively: ``Normal`` is ``normal``)."""
    path = Path(path)
    df = _read_csv(path, dtype={"ImageID": str, "ImageDir": str}) if df is None else df
    _require(df, ["ImageID", "Labels"], path, "PadChest")
    _check_unique(df["ImageID"].astype(str), path, "ImageID")
    found = [_padchest_labels(v, i + 2, path) for i, v in enumerate(df["Labels"].tolist())]
    keep = np.array([PADCHEST_EXCLUDE not in f for f in found], dtype=bool)
    df = df.loc[keep].reset_index(drop=True)
    found = [f for f, k in zip(found, keep) if k]
    suboptimal = np.array([PADCHEST_SUBOPTIMAL in f for f in found])
    found = [[t for t in f if t != PADCHEST_SUBOPTIMAL] for f in found]
    if isinstance(classes, (str, Path)):
        classes = [ln.strip() for ln in Path(classes).read_text().splitlines() if ln.strip()]
    if classes is None:
        from collections import Counter

        counts = Counter(t for f in found for t in f)
        names = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    else:
        names = list(classes)
    col = {n.strip().lower(): j for j, n in enumerate(names)}
    labels = np.zeros((len(df), len(names)), dtype=np.float32)
    for i, f in enumerate(found):
        for t in f:
            if t in col:
                labels[i, col[t]] = 1.0
    ids = df["ImageID"].astype(str).to_numpy(dtype=object)
    paths = ids
    if "ImageDir" in df.columns:
        d = df["ImageDir"].fillna("").astype(str).str.replace(r"\.0$", "", regex=True)
        paths = np.array([f"{a}/{b}" if a else b for a, b in zip(d, ids)], dtype=object)
    meta = pd.DataFrame({
        "study": df["StudyID"].astype(str).to_numpy() if "StudyID" in df.columns else ids,
        "patient": df["PatientID"].astype(str).to_numpy() if "PatientID" in df.columns else "",
        "view": [normalise_view(v) for v in df["Projection"]] if "Projection" in df.columns else "",
        "suboptimal": suboptimal,
    })
    for c in ("MethodLabel", "split"):
        if c in df.columns:
            meta["method_label" if c == "MethodLabel" else c] = df[c].astype(str).to_numpy()
    return LabelTable(ids, labels, tuple(names), "padchest", paths=paths, meta=meta, source=path,
                      extra={"excluded": int((~keep).sum()), "suboptimal": int(suboptimal.sum())})


def read_coco(path: str | Path) -> LabelTable:
    """COCO ``instances_*.json``: an image is positive for a category if it has at least one
    instance of it, negative otherwise (fully labelled). Classes in category-id order."""
    path = Path(path)
    if not path.is_file():
        raise TableFormatError(f"{path}: file not found")
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _err(path, f"not valid JSON ({e.msg if hasattr(e, 'msg') else e})") from None
    if not isinstance(d, dict):
        raise _err(path, "COCO annotations must be a JSON object with 'images', 'annotations', 'categories'")
    missing = [k for k in ("images", "annotations", "categories") if k not in d]
    if missing:
        raise _err(path, f"COCO annotations are missing key(s) {missing}")
    cats = sorted(d["categories"], key=lambda c: c["id"])
    cat_pos = {c["id"]: j for j, c in enumerate(cats)}
    names = tuple(str(c["name"]) for c in cats)
    images = d["images"]
    ids = pd.Series([str(im["file_name"]) for im in images])
    _check_unique(ids, path, "image file_name")
    img_pos = {im["id"]: i for i, im in enumerate(images)}
    labels = np.zeros((len(images), len(cats)), dtype=np.float32)
    rows, cols = [], []
    for a in d["annotations"]:
        i = img_pos.get(a.get("image_id"))
        j = cat_pos.get(a.get("category_id"))
        if i is None or j is None:
            raise _err(path, f"annotation {a.get('id')!r} refers to an unknown image or category")
        rows.append(i)
        cols.append(j)
    if rows:
        labels[np.asarray(rows), np.asarray(cols)] = 1.0
    meta = pd.DataFrame({
        "study": ids.to_numpy(),
        "coco_id": [im["id"] for im in images],
        "width": [im.get("width") for im in images],
        "height": [im.get("height") for im in images],
    })
    split = re.search(r"instances_(\w+?)\.json$", path.name)
    extra = {"images_subdir": split.group(1)} if split else {}
    if names == COCO_80:
        extra["label_space"] = "coco"
    return LabelTable(ids.to_numpy(dtype=object), labels, names, "coco", meta=meta, source=path, extra=extra)


def _read_class_list(path: Path) -> tuple[list[str], dict[str, str]]:
    """Open Images class list: ``classes-trainable.txt`` (one MID per line) or
    ``class-descriptions.csv`` (``MID,name`` rows, no header). Returns MIDs and MID -> name."""
    text = path.read_text(encoding="utf-8").splitlines()
    mids, names = [], {}
    for ln in text:
        ln = ln.strip()
        if not ln:
            continue
        if "," in ln:
            mid, name = ln.split(",", 1)
            mid, name = mid.strip(), name.strip().strip('"')
            if mid.lower() in {"labelname", "mid"}:
                continue
            names[mid] = name
        else:
            mid = ln
        mids.append(mid)
    return mids, names


def read_openimages(path: str | Path, classes: str | Path | Sequence[str] | None = None,
                    df: pd.DataFrame | None = None) -> LabelTable:
    """Open Images V3 human-verified image labels (``ImageID,Source,LabelName,Confidence``).

    Confidence 1 -> positive, 0 -> negative, anything else and every (image, class) pair not
    listed -> unknown. ``classes`` is the class list (``classes-trainable.txt`` or
    ``class-descriptions.csv`` or a list of MIDs); by default a ``classes-trainable.txt`` /
    ``classes.txt`` next to the table is used when present, else the MIDs found in the table.
    Labels of classes outside the list are dropped (counted in ``extra['dropped_labels']``).
    Labels are stored as float16 (1 / 0 / -1 / NaN are exact) to halve memory.
    """
    path = Path(path)
    df = _read_csv(path, dtype={"ImageID": str, "LabelName": str, "Source": str}) if df is None else df
    _require(df, ["ImageID", "LabelName", "Confidence"], path, "Open Images")
    descriptions: dict[str, str] = {}
    if classes is None:
        for cand in ("classes-trainable.txt", "classes.txt", "class-descriptions.csv"):
            if (path.parent / cand).is_file():
                classes = path.parent / cand
                break
    if isinstance(classes, (str, Path)):
        mids, descriptions = _read_class_list(Path(classes))
        if not descriptions:
            desc_file = Path(classes).parent / "class-descriptions.csv"
            if desc_file.is_file():
                _, descriptions = _read_class_list(desc_file)
    elif classes is not None:
        mids = [str(c) for c in classes]
    else:
        mids = sorted(df["LabelName"].astype(str).unique().tolist())
    if len(set(mids)) != len(mids):
        raise _err(path, "the class list repeats class ids")
    conf = pd.to_numeric(df["Confidence"], errors="coerce").to_numpy(dtype=np.float64)
    img_codes, img_ids = pd.factorize(df["ImageID"].astype(str), sort=False)
    mid_index = pd.Index(mids)
    cls_codes = mid_index.get_indexer(df["LabelName"].astype(str))
    inside = cls_codes >= 0
    dropped = int((~inside).sum())
    value = np.where(conf == 1, 1.0, np.where(conf == 0, 0.0, np.nan))
    keep = inside & ~np.isnan(value)
    labels = np.full((len(img_ids), len(mids)), np.nan, dtype=np.float16)
    r, c, v = img_codes[keep], cls_codes[keep], value[keep]
    # conflicting duplicates (same image and class, different verdicts): positive wins
    order = np.argsort(v, kind="stable")
    labels[r[order], c[order]] = v[order].astype(np.float16)
    class_names = tuple(descriptions.get(m, m) for m in mids)
    if len(set(class_names)) != len(class_names):
        class_names = tuple(mids)
    ids = np.asarray(img_ids, dtype=object)
    meta = pd.DataFrame({"study": ids})
    return LabelTable(ids, labels, class_names, "openimages", paths=np.array([f"{i}.jpg" for i in ids], dtype=object),
                      meta=meta, source=path, extra={"dropped_labels": dropped, "mids": list(mids)})


def read_generic(path: str | Path, df: pd.DataFrame | None = None, classes: Sequence[str] | None = None,
                 id_column: str | None = None) -> LabelTable:
    """cxrkit's generic CSV: one id / path column (``Path``, ``id``, ``image`` ...), class
    columns with 1 / 0 / -1 / blank, metadata columns named ``meta.<name>`` (or well-known
    names such as ``split``, ``study``, ``view``). ``classes`` restricts / orders the classes."""
    path = Path(path)
    df = _read_csv(path) if df is None else df
    if id_column is None:
        id_column = next((c for c in GENERIC_ID_COLUMNS if c in df.columns), None)
    if id_column is None or id_column not in df.columns:
        raise _err(path, f"no id column; name one of {list(GENERIC_ID_COLUMNS)} "
                         f"(columns are {list(df.columns)[:8]}{'...' if len(df.columns) > 8 else ''})")
    if classes is None:
        classes = [c for c in df.columns
                   if c != id_column and not str(c).startswith("meta.") and c not in GENERIC_META_COLUMNS
                   and not str(c).startswith("Unnamed:")]
        if not classes:
            raise _err(path, "no class columns found next to the id column")
    else:
        _require(df, list(classes), path, "label")
    ids_s = df["meta.id"].astype(str) if "meta.id" in df.columns else df[id_column].astype(str)
    _check_unique(ids_s, path, id_column)
    labels = _label_block(df, list(classes), path, (1.0, 0.0, -1.0))
    meta = pd.DataFrame(index=pd.RangeIndex(len(df)))
    for c in df.columns:
        name = str(c)
        if name.startswith("meta.") and name != "meta.id":
            meta[name[5:]] = df[c].to_numpy()
        elif name in {"split", "study", "patient", "view", "fold"}:
            meta[name] = df[c].astype(str).to_numpy()
    if "view" in meta.columns:
        meta["view"] = [normalise_view(v) for v in meta["view"]]
    if "study" not in meta.columns:
        meta["study"] = ids_s.to_numpy()
    fmt = str(df["meta.format"].iloc[0]) if "meta.format" in df.columns and len(df) else "generic"
    return LabelTable(ids_s.to_numpy(dtype=object), labels, tuple(classes), "generic",
                      paths=df[id_column].astype(str).to_numpy(dtype=object), meta=meta, source=path,
                      extra={"origin_format": fmt} if fmt != "generic" else {})


def detect_format(path: str | Path, columns: Sequence[str] | None = None) -> str:
    """Guess the format of a table from its suffix and columns."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        return "coco"
    cols = set(columns or [])
    if any(str(c).startswith("meta.") for c in cols):
        return "generic"  # written by LabelTable.to_csv
    if {"ImageID", "LabelName", "Confidence"} <= cols:
        return "openimages"
    if {"ImageID", "Labels"} <= cols and ({"Projection", "ImageDir", "MethodLabel", "Localizations"} & cols):
        return "padchest"
    if "Image Index" in cols and ("Finding Labels" in cols or not any(c in cols for c in NIH_14)):
        return "nih"  # without Finding Labels the NIH reader names the missing column
    if "dicom_id" in cols and sum(c in cols for c in CXR_LT_26) >= 20:
        return "cxr-lt"
    if "Path" in cols and ("Frontal/Lateral" in cols or "AP/PA" in cols
                           or sum(c in cols for c in CHEXPERT_14) >= 12):
        return "chexpert"
    return "generic"


#: column names of the supported formats, matched case-insensitively (``image index`` is
#: NIH's ``Image Index``, ``PATH`` CheXpert's ``Path``, ``pleural effusion`` the class)
KNOWN_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position",
                 "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "dicom_id", "study_id", "subject_id", "ImageID",
                 "LabelName", "Confidence", "split", *CHEXPERT_14, *CXR_LT_26, *NIH_14)


def _canonical_columns(df: pd.DataFrame) -> pd.DataFrame:
    """Rename columns that differ from a known name only in case / surrounding spaces."""
    canon = {c.lower(): c for c in reversed(KNOWN_COLUMNS)}
    present = set(df.columns)
    ren = {}
    as_is = set(KNOWN_COLUMNS) | set(GENERIC_ID_COLUMNS) | {"fpath"}  # names some format reads as they are
    for c in df.columns:
        k = str(c).strip().lower()
        if c in as_is:
            continue
        if k in canon and canon[k] != c and canon[k] not in present and canon[k] not in ren.values():
            ren[c] = canon[k]
    return df.rename(columns=ren) if ren else df


def load_table(path: str | Path, format: str | None = None, classes: str | Path | Sequence[str] | None = None) -> LabelTable:
    """Read a label table in any supported format (auto-detected unless ``format`` is given)."""
    path = Path(path)
    if not path.exists():
        raise TableFormatError(f"{path}: file not found")
    if format is not None:
        format = format.lower().replace("_", "-")
        format = {"cxrlt": "cxr-lt", "open-images": "openimages", "oi": "openimages", "csv": "generic",
                  "cxrkit": "generic"}.get(format, format)
        if format not in FORMATS:
            raise TableFormatError(f"unknown table format {format!r}; use one of {list(FORMATS)}")
    if format == "coco" or (format is None and path.suffix.lower() == ".json"):
        return read_coco(path)
    df = _read_csv(path, dtype={"ImageID": str, "LabelName": str, "Image Index": str, "dicom_id": str,
                                "Path": str, "path": str, "Finding Labels": str, "id": str, "ImageDir": str,
                                "Labels": str})
    df = _canonical_columns(df)
    fmt = format or detect_format(path, list(df.columns))
    log.debug("%s: format %s", path, fmt)
    if fmt == "chexpert":
        return read_chexpert(path, df)
    if fmt == "nih":
        return read_nih(path, df)
    if fmt == "cxr-lt":
        return read_cxrlt(path, df)
    if fmt == "openimages":
        return read_openimages(path, classes=classes, df=df)
    if fmt == "padchest":
        return read_padchest(path, df, classes=classes)
    if isinstance(classes, (str, Path)):
        classes = [ln.strip() for ln in Path(classes).read_text().splitlines() if ln.strip()]
    return read_generic(path, df, classes=classes)


# ---------------------------------------------------------------------------------------
# summaries and image paths
# ---------------------------------------------------------------------------------------


def summarize(table: LabelTable, head_min: float | None = None, tail_max: float | None = None) -> dict[str, Any]:
    """The JSON summary written by ``cxrkit data inspect``."""
    cnt = table.counts()
    groups = head_medium_tail(cnt["positive"], head_min, tail_max)
    n = len(table)
    classes = []
    for j, name in enumerate(table.classes):
        pos = int(cnt["positive"][j])
        classes.append({
            "name": name,
            "positive": pos,
            "negative": int(cnt["negative"][j]),
            "uncertain": int(cnt["uncertain"][j]),
            "unknown": int(cnt["unknown"][j]),
            "prevalence": pos / n if n else 0.0,
            "group": groups[j],
        })
    out: dict[str, Any] = {
        "format": table.format,
        "source": str(table.source) if table.source else None,
        "n_images": n,
        "n_classes": len(table.classes),
        "known_fraction": float(1.0 - np.isnan(table.labels).mean()) if n else 0.0,
        "classes": classes,
        "groups": {g: [c["name"] for c in classes if c["group"] == g] for g in ("head", "medium", "tail")},
    }
    if "study" in table.meta.columns:
        out["n_studies"] = int(table.meta["study"].nunique())
    if "view" in table.meta.columns:
        vc = table.meta["view"].replace("", "unknown").value_counts()
        out["views"] = {str(k): int(v) for k, v in vc.items()}
    for k, v in table.extra.items():
        if isinstance(v, (int, float, str)):
            out[k] = v
    return out


def find_images_root(table: LabelTable, images_root: str | Path | None = None, probe: int = 20) -> Path:
    """The folder relative to which the table's image paths resolve.

    Tries ``images_root`` (when given), the table's folder, its parent, and for COCO the
    sibling ``images/<split>`` / ``<split>`` folders; picks the first where most of the first
    ``probe`` paths exist. Falls back to ``images_root`` or the table's folder.
    """
    cands: list[Path] = []
    if images_root is not None:
        cands.append(Path(images_root))
    if table.root is not None:
        cands += [table.root, table.root.parent]
        sub = table.extra.get("images_subdir")
        if sub:
            cands += [table.root.parent / "images" / sub, table.root.parent / sub, table.root / sub,
                      table.root.parent / "images"]
        cands += [table.root / "images", table.root.parent / "images"]
    sample = list(table.paths[:probe])
    if not sample:
        return cands[0] if cands else Path(".")
    best, best_hits = None, 0
    for c in cands:
        hits = sum((c / p).exists() for p in sample)
        if hits > best_hits:
            best, best_hits = c, hits
            if hits == len(sample):
                break
    if best is not None:
        return best
    return cands[0] if cands else Path(".")


def resolve_image_paths(table: LabelTable, images_root: str | Path | None = None) -> tuple[list[Path], np.ndarray]:
    """Absolute image paths of every row and a boolean mask of those that exist.

    Missing files are reported (by the caller), never fatal. When paths are bare file names
    that live in sub-folders (NIH's ``images_001/images/...``), the root is indexed once by
    file name.
    """
    root = find_images_root(table, images_root)
    paths = [root / p for p in table.paths]
    exists = np.fromiter((p.is_file() for p in paths), dtype=bool, count=len(paths))
    if (~exists).any() and root.is_dir():
        missing_names = {Path(str(p)).name for p, e in zip(table.paths, exists) if not e}
        index: dict[str, Path] = {}
        for dirpath, _dirs, files in os.walk(root):
            for fn in files:
                if fn in missing_names and fn not in index:
                    index[fn] = Path(dirpath) / fn
        if index:
            for i in np.flatnonzero(~exists):
                hit = index.get(Path(str(table.paths[i])).name)
                if hit is not None:
                    paths[i] = hit
                    exists[i] = True
    return paths, exists
