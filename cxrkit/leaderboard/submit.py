"""``cxrkit-submit``: the leaderboard-submission entry point (no torch needed; runs an
ONNX model or ensemble with onnxruntime). Used as the container's ENTRYPOINT.

Modes::

    cxrkit-submit INPUT.csv OUTPUT.csv             CheXpert CodaLab: input has a Path column; output
    cxrkit-submit chexpert INPUT.csv OUTPUT.csv    is Study + the 5 competition columns, one row per
                                                   study (maximum over its views)
    cxrkit-submit cxr-lt INPUT.csv OUT_DIR         CXR-LT: OUT_DIR/submission.csv (id + 26 columns,
      [--sample-submission S.csv]                  or the sample submission's columns and rows) and
                                                   OUT_DIR/submission.zip (+ code/ with the model card)
    cxrkit-submit gc [--input /input] [--output /output]
                                                   grand-challenge style (the default without
                                                   arguments): every image under /input (as listed
                                                   by /input/inputs.json when present) ->
                                                   /output/results.json (+ probabilities.json for
                                                   a single case), or with --interface the phase's
                                                   output sockets

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

from ..errors import CxrkitError
from ..labels import CHEXPERT_COMPETITION_5, CXR_LT_26

DEFAULT_MODEL = "/opt/ml/model"


def submission_engine() -> str:
    """``openvino`` where the image has OpenVINO (built with CXRKIT_OPENVINO=1) and the CPU
    is Intel's (AMX / AVX-512: measured faster there), else ``onnx``; ``CXRKIT_ENGINE``
    (onnx / openvino) overrides."""
    from ..inference.runtime import openvino_installed, openvino_preferred

    if os.environ.get("CXRKIT_ENGINE", "").strip().lower() == "openvino" and not openvino_installed():
        raise CxrkitError("CXRKIT_ENGINE=openvino, but this image has no OpenVINO (build it with "
                          "CXRKIT_OPENVINO=1 challenge/do_build.sh)")
    return "openvino" if openvino_preferred() else "onnx"


def _predictor(model: str | None, threads: int | None) -> Any:
    from ..inference.runtime import OnnxPredictor, OpenVinoPredictor, read_spec

    path = model or os.environ.get("CXRKIT_MODEL") or DEFAULT_MODEL
    if submission_engine() == "openvino":  # bf16 / int8 where the CPU has the units and it measured faster
        return OpenVinoPredictor(read_spec(path), threads=threads, precision="auto")
    return OnnxPredictor(read_spec(path), threads=threads, precision="auto")  # int8 where the CPU has the units


def _resolve(p: str, table_dir: Path) -> Path:
    """A path from an input table: relative to the working folder, else to the table's folder."""
    q = Path(p)
    if q.is_absolute() or q.exists():
        return q
    alt = table_dir / q
    return alt if alt.exists() else q


def _rules(p: str, table_dir: Path) -> list[tuple[Path, int]]:
    """Where a table's relative path may be: (base folder, leading parts dropped), the working
    folder first, then the table's folder, each with the whole path, then without its first
    part(s) (``CheXpert-v1.0/valid/...`` found as ``valid/...`` where the bundle is ``valid``)."""
    n = len(Path(p).parts)
    return [(base, k) for k in range(n) for base in dict.fromkeys([Path("."), table_dir])]


def resolve_table_paths(paths: list[str], table_dir: Path, what: str) -> tuple[list[Path], str]:
    """Every path of an input table resolved by one rule (see :func:`_rules`), found on its
    first findable image; returns the paths and the rule in words (none found: where it
    looked and the layout the paths need)."""
    if not paths:
        return [], ""
    rule = None
    for p in paths[:50]:
        if Path(p).is_absolute():
            continue
        rule = next(((b, k) for b, k in _rules(p, table_dir) if b.joinpath(*Path(p).parts[k:]).exists()), None)
        if rule:
            break
    if rule is None:
        if all(Path(p).is_absolute() for p in paths):
            return [Path(p) for p in paths], "absolute paths"
        first = paths[0]
        return [_resolve(p, table_dir) for p in paths], (
            f"no image found for {first!r} under the working folder ({Path.cwd()}) or the table's folder "
            f"({table_dir.resolve()}), whole or without leading folders: lay the images out so that {first} "
            f"exists under one of them (e.g. mount the image bundle as {Path(first).parts[0]}/)")
    base, k = rule
    out = []
    for p in paths:
        q = Path(p)
        cand = q if q.is_absolute() else base.joinpath(*q.parts[k:])
        out.append(cand if cand.exists() else _resolve(p, table_dir))
    where = "the working folder" if base == Path(".") else f"the table's folder ({table_dir})"
    dropped = f", without their first {k} folder(s) ({'/'.join(Path(paths[0]).parts[:k])}/)" if k else ""
    return out, f"image paths resolved against {where}{dropped}"


def _predict_all(pred: Any, paths: list[Path], args: argparse.Namespace) -> np.ndarray:
    from ..inference.predict import predict_paths

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
    from ..utils import atomic_write

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
    paths, how = resolve_table_paths([r["Path"] for r in rows], inp.parent, str(inp))
    if how.startswith("no image found"):
        try:
            _predict_all(pred, paths, args)
        except CxrkitError as e:
            raise CxrkitError(f"{e}; {how}") from None
    print(how)  # stdout: CodaLab keeps it; stderr stays empty on a good run
    probs = _predict_all(pred, paths, args)[:, cols]
    from ..inference.runtime import aggregate_studies

    studies = [_study(r["Path"]) for r in rows]
    ids, sp, _ = aggregate_studies(probs, studies, None, "max")
    _write_csv(Path(args.output), ["Study", *CHEXPERT_COMPETITION_5],
               [[s, *(f"{v:.6f}" for v in p)] for s, p in zip(ids, sp)])


def _study(path: str) -> str:
    """CheXpert study key, the official rule: the view file's path up to its last ``/``, as
    the input table spells it (any prefix kept: ``CheXpert-v1.0/...``, ``study_data/...``,
    absolute paths, ``./``)."""
    p = str(path).strip().replace("\\", "/")
    return p.rsplit("/", 1)[0] if "/" in p else ""


# ---------------------------------------------------------------------------------------
# CXR-LT (2023: 26 classes; 2024 MICCAI: task 1 40 classes with Normal, task 2 26 with
# Normal, task 3 unseen classes) -- the class list and order come from a sample submission
# ---------------------------------------------------------------------------------------

#: names that mean the same finding in different label tables
SYNONYMS = {"no finding": "normal", "normal": "normal", "pleural effusion": "effusion", "effusion": "effusion",
            "pleural thickening": "pleural thickening", "calcification of the aorta": "calcification of the aorta",
            "aortic calcification": "calcification of the aorta"}


def class_key(name: str) -> str:
    """Case, space, underscore and hyphen insensitive; ``No Finding`` = ``Normal``,
    ``Pleural_Effusion`` = ``Pleural Effusion`` = ``Effusion``."""
    import re

    k = re.sub(r"[\s_\-]+", " ", str(name).strip().lower())
    return SYNONYMS.get(k, k)


def map_classes(wanted: list[str], available: list[str], what: str) -> list[int]:
    """Index into ``available`` for every ``wanted`` name; one error naming every class missing."""
    index: dict[str, int] = {}
    for i, c in enumerate(available):
        index.setdefault(class_key(c), i)
    missing = [w for w in wanted if class_key(w) not in index]
    if missing:
        from ..labels import CXR_LT_2026_TASK2

        unseen = {class_key(c) for c in CXR_LT_2026_TASK2}
        why = (" (unseen classes of a zero-shot task: make a model that scores them from text prompts with "
               "`cxrkit zeroshot CLIP_FOLDER --prompts P.yaml`, or add them to a probe with --zero-shot)"
               if all(class_key(m) in unseen for m in missing) else "")
        raise CxrkitError(f"the model cannot produce {len(missing)} class(es) {what} asks for: "
                          f"{', '.join(missing)}{why}")
    return [index[class_key(w)] for w in wanted]


def read_sample_submission(path: Path) -> tuple[str, list[str], list[str]]:
    """(id column, class columns in order, ids in order) of a leaderboard's sample submission."""
    if not path.is_file():
        raise CxrkitError(f"{path}: sample submission not found")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or len(header) < 2:
            raise CxrkitError(f"{path}: a sample submission needs an id column and at least one class column")
        ids = [r[0] for r in reader if r]
    return header[0], header[1:], ids


def _prevalence(pred: Any, probs: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Per-class fill value for rows that could not be predicted: the training prevalence the
    model records, else the mean prediction over the rows that were predicted."""
    fallback = probs[ok].mean(0) if ok.any() else np.full(probs.shape[1], 0.5, np.float32)
    out = fallback.astype(np.float64)
    per_member = [m.meta.get("extra", {}).get("train_prevalence") or {} for m in pred.spec.members]
    for j, c in enumerate(pred.classes):
        vals = [d[c] for d in per_member if d.get(c) is not None]
        if vals:
            out[j] = float(np.mean(vals))
    return out


def _predict_or_fill(pred: Any, paths: list[Path], args: argparse.Namespace, out_dir: Path
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities for every path; unreadable / missing images get the training prevalence,
    are listed on stderr and in ``OUT/missing.csv``; with ``--strict`` the run fails."""
    from ..inference.predict import predict_paths

    probs, idx, failures = predict_paths(pred, paths, batch_size=args.batch_size, workers=args.workers,
                                         tta=args.tta, show_progress=False)
    out = np.zeros((len(paths), len(pred.classes)), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)
    out[idx] = probs
    ok[idx] = True
    if failures:
        fill = _prevalence(pred, out, ok)
        out[~ok] = fill
        reasons = {f.path: f for f in failures}
        _write_csv(out_dir / "missing.csv", ["path", "reason", "detail"],
                   [[str(p), reasons.get(str(p)).reason if str(p) in reasons else "missing",
                     reasons.get(str(p)).detail if str(p) in reasons else ""] for p in np.asarray(paths)[~ok]])
        print(f"warning: {int((~ok).sum())} of {len(paths)} image(s) could not be predicted; their rows hold the "
              f"training prevalence (list in {out_dir / 'missing.csv'})", file=sys.stderr)
        for p in np.asarray(paths, dtype=object)[~ok][:20]:
            f = reasons.get(str(p))
            print(f"  {p}: {f.detail if f else 'not found'}", file=sys.stderr)
        if args.strict:
            raise CxrkitError(f"{int((~ok).sum())} image(s) could not be predicted (--strict)")
    return out, ok


def cxr_lt(args: argparse.Namespace) -> None:
    pred = _predictor(args.model, args.threads)
    inp = Path(args.input)
    rows = _read_rows(inp)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    if args.sample_submission:
        id_name, wanted, sample_ids = read_sample_submission(Path(args.sample_submission))
    else:
        id_name, wanted, sample_ids = "dicom_id", list(CXR_LT_26), None
    cols = map_classes(wanted, pred.classes, "the CXR-LT submission" + (
        f" ({args.sample_submission})" if args.sample_submission else " (26 classes)"))
    id_col = next((c for c in (id_name, "dicom_id", "id", "image_id", "ImageID", "study_id") if c in rows[0]), None)
    path_col = next((c for c in ("path", "Path", "fpath", "image", "file") if c in rows[0]), None)
    if id_col is None and path_col is None:
        raise CxrkitError(f"{inp}: needs an id ({id_name}) and/or a path column")
    if path_col is None:
        path_col = id_col
    root = Path(args.images_root) if getattr(args, "images_root", None) else inp.parent
    paths = [_resolve(r[path_col], root) for r in rows]
    image_ids = [r[id_col] if id_col else Path(r[path_col]).stem for r in rows]
    probs, ok = _predict_or_fill(pred, paths, args, out)
    fill = _prevalence(pred, probs, ok)[cols]
    probs = probs[:, cols]
    agg = args.aggregate
    if agg != "image":  # one row per study (or study and view), max over its images
        key_col = "study_id" if agg == "study" else None
        if key_col and key_col not in rows[0]:
            raise CxrkitError(f"{inp}: --aggregate {agg} needs a study_id column")
        keys = [r["study_id"] if agg == "study" else f"{r.get('study_id', '')}_{r.get('view', r.get('ViewPosition', ''))}"
                for r in rows]
        from ..inference.runtime import aggregate_studies

        image_ids, probs, _ = aggregate_studies(probs, keys, None, "max")
    by_id = {i: k for k, i in enumerate(image_ids)}
    order = sample_ids if sample_ids is not None else list(image_ids)
    absent = [i for i in order if i not in by_id]
    if absent:
        print(f"warning: {len(absent)} id(s) of the sample submission are not in {inp}; their rows hold the "
              "training prevalence", file=sys.stderr)
        if args.strict:
            raise CxrkitError(f"{len(absent)} id(s) of the sample submission have no image (--strict)")
    body = []
    for i in order:
        p = probs[by_id[i]] if i in by_id else fill
        body.append([i, *(f"{v:.6f}" for v in p)])
    _write_csv(out / "submission.csv", [id_name, *wanted], body)
    tmp = out / ".submission.zip.tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(out / "submission.csv", "submission.csv")
        if not args.csv_only:  # the layout the winning entries used: the CSV plus code/
            for name, text in _model_card(pred, args).items():
                z.writestr(f"code/{name}", text)
    os.replace(tmp, out / "submission.zip")


def _model_card(pred: Any, args: argparse.Namespace) -> dict[str, str]:
    """code/ of a CXR-LT zip: the model's configs and a card with the cxrkit version."""
    from .. import __version__

    files = {}
    lines = [f"# {pred.name}", "", f"cxrkit {__version__}; model version {pred.version}; "
             f"{len(pred.spec.members)} member(s)", "", "Classes: " + ", ".join(pred.classes), "",
             "Made with `cxrkit-submit cxr-lt` ("
             + ("OpenVINO" if type(pred).__name__ == "OpenVinoPredictor" else "onnxruntime") + " on the CPU"
             + (f", TTA {args.tta}" if args.tta else "") + ")."]
    for k, m in enumerate(pred.spec.members):
        cfg = m.meta.get("train_config")
        if cfg:
            files[f"config-{k:02d}.json"] = json.dumps(cfg, indent=2, default=str)
        files[f"model-{k:02d}.json"] = json.dumps({kk: v for kk, v in m.meta.items() if kk != "train_config"},
                                                  indent=2, default=str)
    files["MODEL_CARD.md"] = "\n".join(lines) + "\n"
    return files


def _inside(rel: Any) -> bool:
    """A socket's ``relative_path`` must stay inside /input, judged on the path as written (the
    platform may replace the file itself by a symlink to elsewhere, which is fine)."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        return False
    norm = os.path.normpath(rel.replace("\\", "/"))
    return not (os.path.isabs(norm) or norm == ".." or norm.startswith("../"))


IMAGE_KINDS = {"image", "segmentation", "heat map", "heatmap", "dicom image set", "dicom-image-set"}


def _is_image_socket(interface: dict[str, Any]) -> bool | None:
    """True / False when the socket says what it is (``super_kind`` / ``kind``), else None."""
    sk = str(interface.get("super_kind") or "").strip().lower()
    k = str(interface.get("kind") or "").strip().lower()
    if sk:
        return sk == "image"
    if k:
        return k in IMAGE_KINDS or "image" in k
    return None


def _gc_inputs(root: Path) -> list[Path]:
    """The image files of a grand-challenge job. With ``/input/inputs.json`` only image
    sockets are read (value sockets such as age or sex, and non-image files, are ignored);
    image sockets hold ``.mha`` / ``.tif`` files or a DICOM image set of ``<sop_uid>.dcm``
    files; the files may be symlinks (the platform's shim links them in)."""
    from ..data.images import DICOM_SUFFIXES, IMAGE_SUFFIXES, is_dicom_file

    def is_image_file(f: Path) -> bool:
        return f.suffix.lower() in IMAGE_SUFFIXES | DICOM_SUFFIXES or (f.suffix.lower() != ".json" and is_dicom_file(f))

    def images_in(p: Path) -> list[Path]:
        if p.is_file():
            return [p] if is_image_file(p) else []
        out = []
        for dirpath, _dirs, files in os.walk(p, followlinks=True):
            out += [Path(dirpath) / f for f in files if (Path(dirpath) / f).is_file() and is_image_file(Path(dirpath) / f)]
        return sorted(out)

    listing = root / "inputs.json"
    if listing.is_file():
        try:
            entries = json.loads(listing.read_text())
        except json.JSONDecodeError as e:
            raise CxrkitError(f"{listing}: not valid JSON ({e})") from None
        found: list[Path] = []
        for e in entries if isinstance(entries, list) else [entries]:
            if not isinstance(e, dict):
                continue
            interface = e.get("interface") or {}
            rel = interface.get("relative_path")
            if not rel:
                continue
            if not _inside(rel):
                print(f"warning: {listing}: relative_path {rel!r} leaves the input folder; ignored", file=sys.stderr)
                continue
            kind = _is_image_socket(interface)
            if kind is False:
                continue  # a value or file socket: not an image
            name = ((e.get("image") or {}).get("name")) or ""
            target = root / rel
            cand = images_in(target) if target.exists() else []
            if name:
                cand = [c for c in cand if c.name == name] or cand
            found += cand
        if found:
            return sorted(dict.fromkeys(found))
    return [f for f in images_in(root) if f.name != "inputs.json"]


# ---------------------------------------------------------------------------------------
# grand-challenge output sockets
# ---------------------------------------------------------------------------------------

RESERVED_SLUGS = {"results-json-file", "results"}  # results.json is the platform's own


def _read_phase_file(p: Path) -> Any:
    if not p.is_file():
        raise CxrkitError(f"{p}: interface file not found")
    try:
        text = p.read_text()
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)
    except Exception as e:
        raise CxrkitError(f"{p}: interface file is not valid JSON / YAML ({str(e).splitlines()[0]})") from None


def _interfaces_of(data: Any, p: Path) -> list[dict[str, Any]]:
    """The interfaces a phase file describes, each ``{"inputs": [...] or None, "outputs": [...]}``
    (``inputs`` None: the format does not say, so any job matches)."""
    if isinstance(data, list):
        return [{"inputs": None, "outputs": data}]
    if not isinstance(data, dict):
        return []
    if isinstance(data.get("challenge"), dict):  # a whole pack context: one of its phases
        phases = [ph for ph in data["challenge"].get("phases") or [] if isinstance(ph, dict)]
        want = os.environ.get("CXRKIT_GC_PHASE")
        chosen = [ph for ph in phases if not want or ph.get("slug") == want]
        if len(chosen) != 1:
            names = ", ".join(str(ph.get("slug")) for ph in phases)
            raise CxrkitError(f"{p}: a challenge pack with phases {names or 'none'}; set CXRKIT_GC_PHASE to one of them"
                              if not want else f"{p}: no phase {want!r} (phases: {names})")
        data = chosen[0]
    alg = data.get("algorithm") if isinstance(data.get("algorithm"), dict) else data
    listed = alg.get("algorithm_interfaces") or data.get("algorithm_interfaces")
    if listed:  # grand-challenge-forge >= 0.7: a phase / algorithm offers one or more interfaces
        return [{"inputs": list(i.get("inputs") or []), "outputs": list(i.get("outputs") or [])}
                for i in listed if isinstance(i, dict)]
    outputs = alg.get("outputs") or alg.get("algorithm_outputs") or data.get("algorithm_outputs") or []
    inputs = alg.get("inputs") or alg.get("algorithm_inputs") or data.get("algorithm_inputs")
    return [{"inputs": list(inputs) if inputs else None, "outputs": list(outputs)}] if outputs else []


def load_interfaces(path: str | Path) -> list[dict[str, Any]]:
    """A phase's algorithm interfaces (checked): grand-challenge-forge's current format,
    ``{"algorithm": {"algorithm_interfaces": [{"inputs": [...], "outputs": [...]}, ...]}}`` or a
    pack phase's ``"algorithm_interfaces"`` (a whole pack: the phase ``$CXRKIT_GC_PHASE``), and
    the older ones: a list of output sockets, ``{"outputs": [...]}``, ``{"algorithm":
    {"inputs": [...], "outputs": [...]}}``, ``{"algorithm_outputs": [...]}``. Each output
    socket: ``slug``, ``kind``, ``relative_path`` and optionally ``cxrkit``: what to write
    (``{"write": "probabilities"}``, ``{"write": "probability", "finding": "Cardiomegaly"}``,
    ``{"write": "call", "finding": ...}``, ``{"write": "positive"}``, ``{"write": "report"}``)."""
    p = Path(path)
    ifaces = _interfaces_of(_read_phase_file(p), p)
    if not ifaces or not any(i["outputs"] for i in ifaces):
        raise CxrkitError(f"{p}: lists no output sockets")
    for i in ifaces:
        for s in i["outputs"]:
            if not isinstance(s, dict) or not s.get("relative_path"):
                raise CxrkitError(f"{p}: every output socket needs a relative_path ({s!r})")
            if not _inside(str(s["relative_path"])):
                raise CxrkitError(f"{p}: output relative_path {s['relative_path']!r} leaves /output")
            if s.get("slug") in RESERVED_SLUGS or str(s["relative_path"]) == "results.json":
                raise CxrkitError(f"{p}: results.json is reserved by grand-challenge; choose another socket")
        for s in i["inputs"] or []:
            if not isinstance(s, dict) or not s.get("slug"):
                raise CxrkitError(f"{p}: every input socket needs a slug ({s!r})")
    return ifaces


def load_interface(path: str | Path) -> list[dict[str, Any]]:
    """The output sockets of a phase with one interface (see :func:`load_interfaces`)."""
    ifaces = load_interfaces(path)
    if len(ifaces) > 1:
        raise CxrkitError(f"{path}: the phase has {len(ifaces)} interfaces; the job's inputs choose one "
                          "(load_interfaces / choose_interface)")
    return ifaces[0]["outputs"]


def job_sockets(root: Path) -> list[str] | None:
    """The slugs of the job's input sockets (``/input/inputs.json``), or None without it."""
    listing = root / "inputs.json"
    if not listing.is_file():
        return None
    try:
        entries = json.loads(listing.read_text())
    except json.JSONDecodeError as e:
        raise CxrkitError(f"{listing}: not valid JSON ({e})") from None
    entries = entries if isinstance(entries, list) else [entries]
    return sorted({str((e.get("interface") or {}).get("slug")) for e in entries
                   if isinstance(e, dict) and (e.get("interface") or {}).get("slug")})


def choose_interface(ifaces: list[dict[str, Any]], job: list[str] | None) -> dict[str, Any]:
    """The interface whose input sockets are the job's (as the platform chose it); a format
    that lists no inputs matches any job. None matching: one line, the job fails."""
    if job is not None:
        for i in ifaces:
            if i["inputs"] is not None and sorted({str(s["slug"]) for s in i["inputs"]}) == job:
                return i
    wild = [i for i in ifaces if i["inputs"] is None]
    if wild:
        return wild[0]
    if job is None:
        if len(ifaces) == 1:
            return ifaces[0]
        raise CxrkitError(f"no /input/inputs.json to choose among the phase's {len(ifaces)} interfaces")
    offered = "; ".join(", ".join(sorted(str(s["slug"]) for s in i["inputs"])) for i in ifaces)
    raise CxrkitError(f"the job's input sockets ({', '.join(job) or 'none'}) match none of the phase's "
                      f"{len(ifaces)} interface(s) ({offered})")


def socket_value(socket: dict[str, Any], classes: list[str], probs: np.ndarray, thresholds: np.ndarray,
                 meta: dict[str, Any]) -> Any:
    """What one output socket gets, from its ``cxrkit`` mapping or, without one, from its kind:
    a float socket named after a finding -> that probability, a bool one -> the call at the
    model's threshold, an anything / JSON socket -> every probability."""
    spec = dict(socket.get("cxrkit") or {})
    kind = str(socket.get("kind") or "").strip().lower()
    slug = str(socket.get("slug") or "")
    write = spec.get("write")
    finding = spec.get("finding")
    if write is None:
        if kind in ("float", "integer", "bool", "boolean"):
            finding = finding or slug
            write = "call" if kind in ("bool", "boolean") else "probability"
        else:
            write = "probabilities"
    if write in ("probability", "call"):
        keys = {class_key(c): i for i, c in enumerate(classes)}
        cand = [class_key(finding or ""), class_key(str(finding or "").replace("-", " "))]
        for suffix in (" probability", " likelihood", " present", " call"):
            cand += [c[: -len(suffix)] for c in list(cand) if c.endswith(suffix)]
        j = next((keys[c] for c in cand if c in keys), None)
        if j is None:
            raise CxrkitError(f"output socket {slug!r}: no finding {finding!r} among the model's classes")
        return round(float(probs[j]), 6) if write == "probability" else bool(probs[j] >= thresholds[j])
    if write == "probabilities":
        return {c: round(float(v), 6) for c, v in zip(classes, probs)}
    if write == "positive":
        return [c for c, v, t in zip(classes, probs, thresholds) if v >= t]
    if write == "report":
        return {**meta, "probabilities": {c: round(float(v), 6) for c, v in zip(classes, probs)},
                "positive": [c for c, v, t in zip(classes, probs, thresholds) if v >= t]}
    raise CxrkitError(f"output socket {slug!r}: unknown cxrkit.write {write!r}")


def _interface_path(args: argparse.Namespace) -> str | None:
    for cand in (args.interface, os.environ.get("CXRKIT_GC_INTERFACE")):
        if cand:
            return cand
    baked = Path(os.environ.get("CXRKIT_MODEL") or DEFAULT_MODEL).parent / "interface.json"
    return str(baked) if baked.is_file() else None


def grand_challenge(args: argparse.Namespace) -> None:
    root, out = Path(args.input), Path(args.output)
    iface = _interface_path(args)
    ifaces = load_interfaces(iface) if iface else None  # checked before the model is loaded
    if not root.is_dir():
        raise CxrkitError(f"{root}: input folder not found")
    # the interface of this job: the one whose inputs are the job's sockets
    sockets = choose_interface(ifaces, job_sockets(root))["outputs"] if ifaces else None
    pred = _predictor(args.model, args.threads)
    paths = _gc_inputs(root)
    if not paths:
        raise CxrkitError(f"{root}: no input images (PNG / JPEG / TIFF / MHA / DICOM)")
    probs = _predict_all(pred, paths, args)
    out.mkdir(parents=True, exist_ok=True)
    from ..utils import write_json

    if sockets is not None:  # one job is one case: its images (e.g. a DICOM set) -> the maximum
        case = probs.max(0)
        meta = {"model": pred.name, "version": pred.version, "inputs": [str(p.relative_to(root)) for p in paths]}
        for sock in sockets:
            write_json(out / str(sock["relative_path"]), socket_value(sock, pred.classes, case, pred.thresholds, meta))
        return
    cases = [{"input": str(p.relative_to(root)), "probabilities": {c: round(float(v), 6) for c, v in zip(pred.classes, pr)},
              "positive": [c for c, v, t in zip(pred.classes, pr, pred.thresholds) if v >= t]}
             for p, pr in zip(paths, probs)]
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
    x.add_argument("--sample-submission", default=None,
                   help="the leaderboard's sample submission: its header gives the id column and the classes in "
                        "order (CXR-LT 2024 tasks), its rows the ids in order")
    x.add_argument("--aggregate", choices=["image", "study", "study-view"], default="image",
                   help="one row per image (default), per study or per study and view (max over images)")
    x.add_argument("--csv-only", action="store_true", help="submission.zip holds only submission.csv (no code/)")
    x.add_argument("--images-root", default=None,
                   help="folder the table's image paths / ids are relative to (default: the table's folder)")
    x.add_argument("--strict", action="store_true", help="fail when an image is missing instead of filling its row")
    g = sub.add_parser("gc", help="grand-challenge: /input -> /output")
    g.add_argument("--input", default="/input")
    g.add_argument("--output", default="/output")
    g.add_argument("--interface", default=None,
                   help="the phase's output sockets (JSON / YAML; default $CXRKIT_GC_INTERFACE or interface.json "
                        "next to the model)")
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
