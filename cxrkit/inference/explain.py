"""Saliency maps: where in a film the model saw a finding (``cxrkit explain``, ``predict
--explain``).

Class activation maps come from the ``grad-cam`` package (jacobgil/pytorch-grad-cam:
Grad-CAM, Grad-CAM++, LayerCAM, EigenCAM..., for CNNs and for ViTs through a reshape of the
tokens), chosen over captum because its CAM methods take a target layer and a reshape
transform and work on any backbone the registry builds, which is what a toolkit with timm,
MONAI and torchxrayvision backbones needs. The target layer is found by running the model
once: the last module of the backbone whose output is a spatial map (B x C x H x W with H,
W >= 2), or, for a transformer, the last one whose output is a token sequence with a square
grid of patch tokens (the class / register tokens dropped).

Per image and finding: ``<out>/<image>/<finding>.png``, the map over the film exactly as the
model saw it (after the model's own preprocessing), with the probability in the title;
``<out>/<image>/sheet.png``, a contact sheet of all of them; ``<out>/explain.csv``, one row
per map (image, finding, probability, where the map peaks). With ``dicom_sc`` and a DICOM
input, also a DICOM Secondary Capture of each overlay in the film's study (highdicom),
marked derived and not for diagnosis.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CxrkitError

log = logging.getLogger(__name__)

METHODS = ("gradcam", "gradcam++", "layercam", "eigencam", "hirescam")


def _cam_class(method: str) -> Any:
    try:
        import pytorch_grad_cam as pgc
    except ImportError:
        from ..extras import install_hint

        raise CxrkitError(f"saliency maps need the grad-cam package: {install_hint('explain')}") from None
    table = {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "layercam": pgc.LayerCAM,
             "eigencam": pgc.EigenCAM, "hirescam": pgc.HiResCAM}
    if method not in table:
        raise CxrkitError(f"--method must be one of {', '.join(METHODS)} (got {method!r})")
    return table[method]


def find_target_layer(net: torch.nn.Module, x: torch.Tensor) -> tuple[torch.nn.Module, Any, str]:
    """(layer, reshape_transform or None, its name) for the CAM of ``net`` on inputs like ``x``."""
    backbone = getattr(net, "backbone", net)
    seen: list[tuple[str, torch.nn.Module, tuple[int, ...]]] = []
    hooks = []
    for name, mod in backbone.named_modules():
        if not name:
            continue

        def hook(m: torch.nn.Module, inp: Any, out: Any, name: str = name) -> None:
            if isinstance(out, torch.Tensor):
                seen.append((name, m, tuple(out.shape)))

        hooks.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    order = {id(m): i for i, (_, m, _) in enumerate(seen)}
    spatial = [(n, m, s) for n, m, s in seen if len(s) == 4 and s[2] >= 2 and s[3] >= 2]
    tokens = []
    for n, m, s in seen:  # a transformer: B x N x C tokens with a square grid after a few prefix tokens
        if len(s) != 3:
            continue
        for prefix in range(0, 9):
            g = math.isqrt(s[1] - prefix) if s[1] > prefix else 0
            if g >= 2 and g * g == s[1] - prefix:
                tokens.append((n, m, prefix, g))
                break
    if tokens and (not spatial or order[id(tokens[-1][1])] > order[id(spatial[-1][1])]):
        # the last block's input norm (pytorch-grad-cam's choice for ViTs): after it, only
        # the class token reaches the head, and the patch tokens' gradients vanish
        norm1 = [t for t in tokens if t[0].endswith("norm1")]
        n, m, prefix, g = norm1[-1] if norm1 else tokens[-2 if len(tokens) > 1 else -1]

        def reshape(t: torch.Tensor, prefix: int = prefix, g: int = g) -> torch.Tensor:
            t = t[:, prefix:, :]
            return t.reshape(t.shape[0], g, g, t.shape[2]).permute(0, 3, 1, 2)

        return m, reshape, n
    if spatial:
        n, m, _ = spatial[-1]
        return m, None, n
    raise CxrkitError("no layer with a spatial map found in this backbone; saliency maps need a CNN or a ViT")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")[:60] or "finding"


class Explainer:
    """CAMs of one saved model (a model folder, or one member of an ensemble)."""

    def __init__(self, model_path: str | Path, method: str = "gradcam", device: str = "cpu") -> None:
        from ..artifact import load_model

        self.loaded = load_model(model_path, device=device)
        self.net = self.loaded.model.eval()
        self.pre = self.loaded.preprocessing
        self.method = method
        self.cam_cls = _cam_class(method)
        self._cam: Any = None
        self.layer_name = ""

    @property
    def classes(self) -> list[str]:
        return self.loaded.classes

    def _get_cam(self, x: torch.Tensor) -> Any:
        if self._cam is None:
            layer, reshape, self.layer_name = find_target_layer(self.net, x)
            self._cam = self.cam_cls(model=self.net, target_layers=[layer], reshape_transform=reshape)
        return self._cam

    def maps(self, x: torch.Tensor, class_idx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities of all classes, one H x W map in [0, 1] per class in ``class_idx``)."""
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        x = x.to(self.loaded.device)
        probs = self.loaded.predict(x)[0]  # calibrated as predict's, when the model is
        cam = self._get_cam(x)
        out = []
        for c in class_idx:
            g = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c))])[0]
            out.append(np.nan_to_num(np.asarray(g, np.float32)))
        return probs, np.stack(out) if out else np.zeros((0, *x.shape[-2:]), np.float32)

    def film(self, x: torch.Tensor) -> np.ndarray:
        """The film as the model saw it: the first input channel, de-normalised, in [0, 1]."""
        return np.clip(self.pre.denormalize(x[0].cpu().numpy()), 0, 1)


def overlay(film: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """RGB uint8: the map (jet) blended over the grey film."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.repeat(film[..., None], 3, axis=2).astype(np.float32)
    return show_cam_on_image(rgb, cam, use_rgb=True, image_weight=0.6)


def _save_png(img: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..utils import atomic_write

    fig, ax = plt.subplots(figsize=(4, 4.3))
    ax.imshow(img)
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _dicom_sc(src: Path, rgb: np.ndarray, path: Path, finding: str, prob: float, model: str) -> None:
    import highdicom as hd
    from pydicom.uid import generate_uid

    from ..hospital.dicom_out import clean_reference, read_source
    from ..hospital.sr import quiet_dicom_libraries
    from ..utils import atomic_write

    with quiet_dicom_libraries():
        ref = clean_reference(read_source(src))  # valid values only, however the film was written
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ref, pixel_array=np.ascontiguousarray(rgb), photometric_interpretation="RGB",
            bits_allocated=8, coordinate_system="PATIENT",
            # the film's own orientation; else a chest film as displayed (patient's left on the right)
            patient_orientation=tuple(ref.get("PatientOrientation") or ("L", "F"))[:2],
            series_instance_uid=generate_uid(), series_number=9902,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer="cxrkit")
        sc.ImageType = ["DERIVED", "SECONDARY", "SALIENCY"]
        sc.BurnedInAnnotation = "NO"
        sc.ImageComments = (f"Saliency map ({finding}, p = {prob:.3f}) of an AI model ({model}); "
                            "derived image, not for diagnosis")[:10240]
        sc.DerivationDescription = f"class activation map of cxrkit model {model}"[:1024]
        if "SpecificCharacterSet" in ref:
            sc.SpecificCharacterSet = ref.SpecificCharacterSet
        # the body part, so that a reader (and dciodvfy) knows no Laterality is needed: a chest
        # is not a paired structure; a film that does not say is a chest film for this model
        sc.BodyPartExamined = str(ref.get("BodyPartExamined") or "CHEST")
        with atomic_write(path) as tmp:
            sc.save_as(tmp, enforce_file_format=True)


def explain(model_path: str | Path, images: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None,
            method: str = "gradcam", dicom_sc: bool = False, only_positive: dict[str, list[str]] | None = None,
            device: str = "cpu", show_progress: bool = True) -> dict[str, Any]:
    """Write the maps of ``images`` to ``out``; ``labels``: the findings (default: all), or
    ``only_positive``: per image path, the findings to explain (``predict --explain``)."""
    from ..data.demo import contact_sheet
    from .runtime import prepare_file
    from ..utils import progress

    ex = Explainer(model_path, method, device)
    if labels:
        unknown = [lb for lb in labels if lb not in ex.classes]
        if unknown:
            raise CxrkitError(f"--labels not in the model: {', '.join(unknown)} (it has {', '.join(ex.classes)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[list[Any]] = []
    failed: list[tuple[str, str]] = []
    thresholds = list(ex.loaded.meta.thresholds or [0.5] * len(ex.classes))
    used: set[str] = set()
    wants = [(path, only_positive.get(str(path)) if only_positive is not None else list(labels or ex.classes))
             for path in images]
    wants = [(path, want) for path, want in wants if want]
    # its own bar, counting maps (one backward pass each: the expensive part), after predict's
    for path, want in progress(wants, f"saliency maps ({len(wants)} image(s))", total=sum(len(w) for _, w in wants),
                               enabled=show_progress, count=lambda pw: len(pw[1])):
        p = Path(path)
        prep = prepare_file(0, p, [ex.pre])
        if prep.arrays is None:
            failed.append((str(p), prep.reason))
            continue
        x = torch.from_numpy(np.ascontiguousarray(prep.arrays[0], np.float32))[None]
        idx = [ex.classes.index(lb) for lb in want]
        probs, cams = ex.maps(x, idx)
        film = ex.film(x)
        stem = _slug(p.stem)
        while stem in used:
            stem += "_"
        used.add(stem)
        d = out / stem
        d.mkdir(exist_ok=True)
        sheet, titles = [], []
        for c, cam in zip(idx, cams):
            name = ex.classes[c]
            img = overlay(film, cam)
            title = f"{name}: p = {probs[c]:.3f}" + (" (positive)" if probs[c] >= thresholds[c] else "")
            _save_png(img, title, d / f"{_slug(name)}.png")
            sheet.append(img.astype(np.float32) / 255.0)
            titles.append(title)
            py, px = np.unravel_index(int(np.argmax(cam)), cam.shape)
            rows.append([str(p), name, f"{probs[c]:.6f}", round(py / cam.shape[0], 4), round(px / cam.shape[1], 4),
                         str(d / f"{_slug(name)}.png")])
            if dicom_sc and prep.info.get("sop_instance_uid"):
                _dicom_sc(p, img, d / f"{_slug(name)}.sc.dcm", name, float(probs[c]), ex.loaded.meta.name)
        contact_sheet(sheet, titles, d / "sheet.png", cols=min(4, len(sheet)))
    from ..utils import atomic_write

    with atomic_write(out / "explain.csv") as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "finding", "probability", "peak_y", "peak_x", "png"])
            w.writerows(rows)
    return {"maps": len(rows), "images": len({r[0] for r in rows}), "failed": failed, "out": str(out),
            "layer": ex.layer_name, "method": method}
