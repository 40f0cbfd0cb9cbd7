"""``cxrkit-submit``: the leaderboard-submission entry point (no torch needed; runs an
ONNX model or ensemble with onnxruntime). Used as the container's ENTRYPOINT.

Modes::

    cxrkit-submit INPUT.csv OUTPUT.csv             CheXpert CodaLab: input has a Path column; output
    cxrkit-submit chexpert INPUT.csv OUTPUT.csv    is Study + the 5 competition columns, one row per
                                                   study (maximum over its views)
    cxrkit-submit cxr-lt INPUT.csv OUT_DIR         CXR-LT: OUT_DIR/submission.csv (id + 26 columns)
                                                   and OUT_DIR/submission.zip
    cxrkit-submit gc [--input /input] [--output /output]
                                                   grand-challenge style (the default without
                                                   arguments): every image under /input (as listed
                                                   by /input/inputs.json when present) ->
                                                   /output/results.json (+ probabilities.json for
                                                   a single case): one probability per label

The model comes from ``--model``, ``$CXRKIT_MODEL`` or ``/opt/ml/model`` (baked into the
image or mounted read-only). Any failure exits non-zero with the reason on stderr.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CxrkitError
from .labels import CHEXPERT_COMPETITION_5, CXR_LT_26

DEFAULT_MODEL = "/opt/ml/model"


def _predictor(model: str | None, threads: int | None) -> Any:
    from .runtime import OnnxPredictor, read_spec

    path = model or os.environ.get("CXRKIT_MODEL") or DEFAULT_MODEL
    return OnnxPredictor(read_spec(path), threads=threads)


def _resolve(p: str, table_dir: Path) -> Path:
    """A path from an input table: relative to the working folder, else to the table's folder."""
    q = Path(p)
    if q.is_absolute() or q.exists():
        return q
    alt = table_dir / q
    return alt if alt.exists() else q


def _predict_all(pred: Any, paths: list[Path], args: argparse.Namespace) -> np.ndarray:
    from .predict import predict_paths

    probs, idx, failures = predict_paths(pred, paths, batch_size=args.batch_size, workers=args.workers, tta=args.tta,
                                         show_progress=False)
    if failures:
        f = failures[0]
        raise CxrkitError(f"{len(failures)} of {len(paths)} image(s) could not be used; first: {f.path}: {f.detail}")
    out = np.zeros((len(paths), probs.shape[1]), dtype=np.float32)
    out[idx] = probs
    return out


def _columns(pred: Any, wanted: tuple[str, ...], mode: str) -> list[int]:
    missing = [c for c in wanted if c not in pred.classes]
    if missing:
        raise CxrkitError(f"the model cannot make a {mode} submission: it lacks {', '.join(missing)}")
    return [pred.classes.index(c) for c in wanted]


def _read_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise CxrkitError(f"{path}: input table not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise CxrkitError(f"{path}: input table has no rows")
    return rows


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    from .utils import atomic_write

    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def chexpert(args: argparse.Namespace) -> None:
    pred = _predictor(args.model, args.threads)
    cols = _columns(pred, CHEXPERT_COMPETITION_5, "CheXpert")
    inp = Path(args.input)
    rows = _read_rows(inp)
    if "Path" not in rows[0]:
        raise CxrkitError(f"{inp}: needs a Path column (CheXpert CodaLab input)")
    paths = [_resolve(r["Path"], inp.parent) for r in rows]
    probs = _predict_all(pred, paths, args)[:, cols]
    from .runtime import aggregate_studies

    studies = [_study(r["Path"]) for r in rows]
    ids, sp, _ = aggregate_studies(probs, studies, None, "max")
    _write_csv(Path(args.output), ["Study", *CHEXPERT_COMPETITION_5],
               [[s, *(f"{v:.6f}" for v in p)] for s, p in zip(ids, sp)])


def _study(path: str) -> str:
    """CheXpert study: the path up to its studyN folder."""
    parts = Path(path).parts
    for i, part in enumerate(parts):
        if part.startswith("study"):
            return "/".join(parts[: i + 1])
    return str(Path(path).parent)


def cxr_lt(args: argparse.Namespace) -> None:
    pred = _predictor(args.model, args.threads)
    cols = _columns(pred, CXR_LT_26, "CXR-LT")
    inp = Path(args.input)
    rows = _read_rows(inp)
    id_col = next((c for c in ("dicom_id", "id", "image_id", "ImageID") if c in rows[0]), None)
    path_col = next((c for c in ("path", "Path", "image", "file") if c in rows[0]), None)
    if id_col is None and path_col is None:
        raise CxrkitError(f"{inp}: needs a dicom_id (and/or path) column")
    if path_col is None:
        path_col = id_col
    paths = [_resolve(r[path_col], inp.parent) for r in rows]
    probs = _predict_all(pred, paths, args)[:, cols]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    ids = [r[id_col] if id_col else Path(r[path_col]).stem for r in rows]
    _write_csv(out / "submission.csv", ["dicom_id", *CXR_LT_26],
               [[i, *(f"{v:.6f}" for v in p)] for i, p in zip(ids, probs)])
    tmp = out / ".submission.zip.tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(out / "submission.csv", "submission.csv")
    os.replace(tmp, out / "submission.zip")


def _inside(rel: Any) -> bool:
    """A socket's ``relative_path`` must stay inside /input, judged on the path as written (the
    platform may replace the file itself by a symlink to elsewhere, which is fine)."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        return False
    norm = os.path.normpath(rel.replace("\\", "/"))
    return not (os.path.isabs(norm) or norm == ".." or norm.startswith("../"))


def _gc_inputs(root: Path) -> list[Path]:
    from .data.images import DICOM_SUFFIXES, IMAGE_SUFFIXES, is_dicom_file

    def images_in(p: Path) -> list[Path]:
        if p.is_file():
            return [p]
        return sorted(f for f in p.rglob("*") if f.is_file() and (f.suffix.lower() in IMAGE_SUFFIXES | DICOM_SUFFIXES
                                                                  or is_dicom_file(f)))

    listing = root / "inputs.json"
    if listing.is_file():
        try:
            entries = json.loads(listing.read_text())
        except json.JSONDecodeError as e:
            raise CxrkitError(f"{listing}: not valid JSON ({e})") from None
        found: list[Path] = []
        for e in entries if isinstance(entries, list) else [entries]:
            rel = (e.get("interface") or {}).get("relative_path") if isinstance(e, dict) else None
            name = ((e.get("image") or {}).get("name") if isinstance(e, dict) else None) or ""
            if rel:
                if not _inside(rel):
                    print(f"warning: {listing}: relative_path {rel!r} leaves the input folder; ignored",
                          file=sys.stderr)
                    continue
                target = root / rel
                cand = images_in(target) if target.exists() else []
                if name:
                    cand = [c for c in cand if c.name == name] or cand
                found += cand
        if found:
            return sorted(dict.fromkeys(found))
    return [f for f in images_in(root) if f.name != "inputs.json"]


def grand_challenge(args: argparse.Namespace) -> None:
    pred = _predictor(args.model, args.threads)
    root, out = Path(args.input), Path(args.output)
    if not root.is_dir():
        raise CxrkitError(f"{root}: input folder not found")
    paths = _gc_inputs(root)
    if not paths:
        raise CxrkitError(f"{root}: no input images (PNG / JPEG / TIFF / MHA / DICOM)")
    probs = _predict_all(pred, paths, args)
    cases = [{"input": str(p.relative_to(root)), "probabilities": {c: round(float(v), 6) for c, v in zip(pred.classes, pr)},
              "positive": [c for c, v, t in zip(pred.classes, pr, pred.thresholds) if v >= t]}
             for p, pr in zip(paths, probs)]
    out.mkdir(parents=True, exist_ok=True)
    from .utils import write_json

    write_json(out / "results.json", {"model": pred.name, "version": pred.version, "cases": cases})
    if len(cases) == 1:
        write_json(out / "probabilities.json", cases[0]["probabilities"])


def _global_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--model", default=None, help="model / ensemble folder with ONNX files (default $CXRKIT_MODEL "
                                                  "or /opt/ml/model)")
    ap.add_argument("--tta", default=None, help="test-time augmentation set (none, flip, seed000, seed000+flip)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=0, help="decoding worker processes")
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime threads")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cxrkit-submit", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(ap)
    sub = ap.add_subparsers(dest="mode")
    c = sub.add_parser("chexpert", help="CheXpert CodaLab: INPUT.csv OUTPUT.csv")
    c.add_argument("input")
    c.add_argument("output")
    x = sub.add_parser("cxr-lt", help="CXR-LT: INPUT.csv OUT_DIR")
    x.add_argument("input")
    x.add_argument("output")
    g = sub.add_parser("gc", help="grand-challenge: /input -> /output")
    g.add_argument("--input", default="/input")
    g.add_argument("--output", default="/output")
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("CXRKIT_QUIET", "1")
    pre = argparse.ArgumentParser(add_help=False)
    _global_options(pre)
    _, rest = pre.parse_known_args(argv)
    head = argv[: len(argv) - len(rest)] if rest else argv
    if not rest:
        rest = ["gc"]  # grand-challenge convention: no arguments
    elif rest[0] not in ("chexpert", "cxr-lt", "gc", "-h", "--help") and len(rest) == 2:
        rest = ["chexpert", *rest]  # CodaLab: <program> input.csv output.csv
    args = parser().parse_args([*head, *rest])
    try:
        {"chexpert": chexpert, "cxr-lt": cxr_lt, "gc": grand_challenge}[args.mode](args)
    except CxrkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except Exception as e:  # the leaderboard only shows stderr: say what broke, in one line
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
