"""SYNTHETIC chest-radiograph-like demo data in CheXpert layout.

Nothing here is a real patient: images are drawn procedurally (body, lungs, ribs,
mediastinum, heart, diaphragm) and every finding is drawn into the pixels so a model can
learn it:

==========================  =========================================================
Cardiomegaly                heart shadow widened (cardiothoracic ratio > 0.5)
Enlarged Cardiomediastinum  upper mediastinum widened
Pleural Effusion            basal opacity with a meniscus, blunted costophrenic angle
Edema                       bilateral perihilar haze
Consolidation               dense focal opacity
Pneumonia                   patchy multifocal opacities
Atelectasis                 plate-like linear opacity, raised hemidiaphragm
Lung Lesion                 round nodule(s)
Lung Opacity                any of the above opacities, or a faint ground-glass patch
Pneumothorax                apical-lateral lucency without lung markings, pleural line
Pleural Other               pleural thickening along the lateral chest wall
Fracture                    rib discontinuity with callus
Support Devices             tubes / lines / pacemaker (very bright)
No Finding                  none of the pathologies (devices allowed)
==========================  =========================================================

Prevalence is long-tailed, findings co-occur as they do clinically (edema with
cardiomegaly and effusion, pneumonia with consolidation), subtle findings are reported as
uncertain (-1.0) and unmentioned negatives are blank, as in CheXpert's ``train.csv``;
``valid.csv`` and the held-out ``test.csv`` are fully labelled 0/1 like CheXpert's validation
and test sets. Studies have a frontal
(PA or AP) view and often a lateral. Deterministic given the seed.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from ..labels import CHEXPERT_14
from ..utils import atomic_write, progress

log = logging.getLogger(__name__)

DATASET_DIR = "synthetic-cxr-demo"

#: Base prevalence of each pathology (before co-occurrence boosts): a long tail.
PREVALENCE: dict[str, float] = {
    "Support Devices": 0.40,
    "Pleural Effusion": 0.28,
    "Edema": 0.17,
    "Atelectasis": 0.13,
    "Cardiomegaly": 0.11,
    "Pneumothorax": 0.08,
    "Consolidation": 0.06,
    "Enlarged Cardiomediastinum": 0.04,
    "Lung Lesion": 0.04,
    "Lung Opacity": 0.05,  # extra faint opacities; also implied by the opacity findings
    "Pneumonia": 0.03,
    "Fracture": 0.025,
    "Pleural Other": 0.015,
}
#: Probability that a negative finding is not mentioned in the report (blank label).
BLANK_NEGATIVE: dict[str, float] = {
    "Support Devices": 0.85, "Pleural Effusion": 0.35, "Edema": 0.55, "Atelectasis": 0.75,
    "Cardiomegaly": 0.65, "Pneumothorax": 0.45, "Consolidation": 0.6, "Enlarged Cardiomediastinum": 0.7,
    "Lung Lesion": 0.9, "Lung Opacity": 0.85, "Pneumonia": 0.8, "Fracture": 0.9, "Pleural Other": 0.95,
}
OPACITY_CHILDREN = ("Edema", "Consolidation", "Pneumonia", "Atelectasis", "Lung Lesion")
PATHOLOGIES = tuple(c for c in CHEXPERT_14 if c not in ("No Finding", "Support Devices"))


@dataclass
class DemoDataset:
    root: Path
    train_csv: Path
    valid_csv: Path
    n_train_images: int
    n_valid_images: int
    test_csv: Path | None = None
    n_test_images: int = 0


# ---------------------------------------------------------------------------------------
# sampling findings
# ---------------------------------------------------------------------------------------


def _sample_findings(rng: np.random.Generator) -> dict[str, float]:
    """Severity in (0, 1] of each present finding."""
    p = dict(PREVALENCE)
    present: dict[str, float] = {}

    def draw(name: str) -> None:
        if rng.random() < min(p[name], 0.95):
            present[name] = float(rng.uniform(0.25, 1.0))

    draw("Edema")
    if "Edema" in present:  # heart failure picture
        p["Cardiomegaly"] += 0.35
        p["Pleural Effusion"] += 0.30
    draw("Cardiomegaly")
    if "Cardiomegaly" in present:
        p["Enlarged Cardiomediastinum"] += 0.25
        p["Pleural Effusion"] += 0.10
    draw("Pneumonia")
    if "Pneumonia" in present:
        p["Consolidation"] += 0.45
    for name in ("Pleural Effusion", "Enlarged Cardiomediastinum", "Consolidation", "Atelectasis",
                 "Pneumothorax", "Lung Lesion", "Fracture", "Pleural Other", "Support Devices", "Lung Opacity"):
        if name == "Atelectasis" and "Pleural Effusion" in present:
            p[name] += 0.10
        if name == "Support Devices" and ("Pneumothorax" in present or "Edema" in present):
            p[name] += 0.25
        draw(name)
    if any(c in present for c in OPACITY_CHILDREN):
        present["Lung Opacity"] = max(present.get("Lung Opacity", 0.0),
                                      max(present.get(c, 0.0) for c in OPACITY_CHILDREN))
    return present


def _report_labels(present: dict[str, float], rng: np.random.Generator) -> dict[str, float]:
    """CheXpert-style labels from the truth: subtle positives are often uncertain, unmentioned
    negatives blank, No Finding is 1 or blank."""
    out: dict[str, float] = {}
    for c in CHEXPERT_14:
        if c == "No Finding":
            continue
        if c in present:
            s = present[c]
            if s < 0.45 and rng.random() < 0.55:
                out[c] = -1.0
            elif rng.random() < 0.02:
                out[c] = np.nan  # missed in the report
            else:
                out[c] = 1.0
        else:
            r = rng.random()
            if r < 0.03:
                out[c] = -1.0  # hedged negative
            elif r < 0.03 + BLANK_NEGATIVE[c]:
                out[c] = np.nan
            else:
                out[c] = 0.0
    no_finding = not any(c in present for c in PATHOLOGIES)
    out["No Finding"] = 1.0 if no_finding else np.nan
    return out


def _true_labels(present: dict[str, float]) -> dict[str, float]:
    out = {c: (1.0 if c in present else 0.0) for c in CHEXPERT_14}
    out["No Finding"] = 0.0 if any(c in present for c in PATHOLOGIES) else 1.0
    return out


# ---------------------------------------------------------------------------------------
# drawing
# ---------------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, n: int, sigma: float) -> np.ndarray:
    z = rng.standard_normal((n, n)).astype(np.float32)
    z = cv2.GaussianBlur(z, (0, 0), sigma)
    return z / (z.std() + 1e-6)


def _blob(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float, sharp: float = 2.0) -> np.ndarray:
    d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    return np.exp(-0.5 * d**sharp * 2.0).astype(np.float32)


def _line(img: np.ndarray, pts: np.ndarray, n: int, value: float, thickness: float) -> np.ndarray:
    """Anti-aliased poly-line drawn into a separate layer (coordinates in [0, 1])."""
    layer = np.zeros_like(img)
    p = np.round(pts * n * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(layer, [p], False, float(value), max(1, int(round(thickness * n))), cv2.LINE_AA, shift=4)
    return layer


@dataclass
class _Film:
    """A synthetic frontal film being drawn: its coordinates, the anatomy the findings are
    placed on, and the image so far."""

    n: int
    yy: np.ndarray
    xx: np.ndarray
    img: np.ndarray
    bw: float
    lung_cx: np.ndarray
    lung_rx: float
    lung_ry: float
    lung_cy: float
    dome_base: float
    lungs: np.ndarray
    lung: np.ndarray
    markings: np.ndarray
    heart_cx: float
    heart_cy: float
    at_side: int
    body: np.ndarray | None = None

    def in_lung(self, layer: np.ndarray, side: int | None = None) -> np.ndarray:
        return layer * (self.lung if side is None else self.lungs[side])


def render_frontal(present: dict[str, float], rng: np.random.Generator, size: int = 128, view: str = "PA") -> np.ndarray:
    """One synthetic frontal radiograph (patient's left on the image right) in [0, 1]: the
    anatomy, then the findings in ``present`` (label -> severity), then the devices."""
    f = _anatomy(present, rng, size, view)
    _draw_airspace_findings(f, present, rng)
    _draw_pleura_bone_devices(f, present, rng, view)
    return _finish(f.img, rng, size)


def _anatomy(present: dict[str, float], rng: np.random.Generator, n: int, view: str) -> _Film:
    """Body, lungs with markings, ribs, clavicles, mediastinum, heart, abdomen (cardiomegaly,
    an enlarged mediastinum and atelectasis's raised dome change the anatomy itself)."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / (n - 1)
    dx, dy = rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02)
    xx, yy = xx - dx, yy - dy
    bw = rng.uniform(0.76, 0.88)
    img = np.full((n, n), 0.06, np.float32)
    # body: boxy superellipse, narrower at the neck
    body = (np.abs((xx - 0.5) / (bw / 2)) ** 3.5 + np.abs((yy - 0.6) / 0.62) ** 3.5) < 1.0
    neck = (np.abs(xx - 0.5) < 0.09) & (yy < 0.2)
    body = (body & ~((yy < 0.14) & (np.abs(xx - 0.5) > 0.1 + (yy / 0.14) * 0.25))) | neck
    img[body] = 0.55
    # lungs
    lung_cx = 0.5 + np.array([-1.0, 1.0]) * rng.uniform(0.16, 0.19)
    lung_rx, lung_ry, lung_cy = rng.uniform(0.12, 0.14), rng.uniform(0.27, 0.3), 0.47
    dome_base = rng.uniform(0.71, 0.75)
    at = present.get("Atelectasis", 0.0)
    at_side = int(rng.integers(0, 2))
    lungs = np.zeros((2, n, n), np.float32)
    domes = []
    for i, cx in enumerate(lung_cx):
        lateral = (xx - cx) * (1 if i else -1) / lung_rx  # >0 towards the chest wall
        dome = dome_base + (-0.03 if i == 1 else 0.0) + 0.06 * np.clip(lateral, -1, 1.5) ** 2
        if at and i == at_side:
            dome = dome - 0.04 * at
        domes.append(dome)
        m = (np.abs((xx - cx) / lung_rx) ** 2.2 + np.abs((yy - lung_cy) / lung_ry) ** 2.2 < 1.0) & (yy < dome)
        lungs[i] = cv2.GaussianBlur(m.astype(np.float32), (0, 0), n / 128)
    lung = np.clip(lungs.sum(0), 0, 1)
    markings = 0.035 * _smooth_noise(rng, n, n / 90)
    img = img - 0.34 * lung + markings * lung
    # ribs: posterior arcs
    rib_layer = np.zeros_like(img)
    for k in range(9):
        y0 = 0.2 + k * 0.062
        for side in (-1, 1):
            xs = np.linspace(0.5 + side * 0.03, 0.5 + side * bw / 2 * 0.95, 24)
            ys = y0 + 0.09 * ((xs - 0.5) / 0.4) ** 2 - 0.02 * k * np.abs(xs - 0.5)
            rib_layer += _line(img, np.stack([xs, ys], 1), n, 0.07, 0.012)
    img += np.minimum(rib_layer, 0.1) * (body > 0)
    # clavicles
    for side in (-1, 1):
        xs = np.linspace(0.5 + side * 0.05, 0.5 + side * 0.3, 12)
        img += _line(img, np.stack([xs, 0.17 - 0.05 * np.abs(xs - 0.5) / 0.3], 1), n, 0.12, 0.02)
    # mediastinum / spine
    ecm = present.get("Enlarged Cardiomediastinum", 0.0)
    med_w = rng.uniform(0.045, 0.055) * (1.0 + (0.7 + 0.5 * ecm if ecm else 0.0))
    med = (np.abs(xx - 0.5 - 0.01) < med_w) & (yy > 0.12) & (yy < 0.62)
    img = np.maximum(img, cv2.GaussianBlur(med.astype(np.float32), (0, 0), n / 100) * 0.72)
    # heart
    cm = present.get("Cardiomegaly", 0.0)
    mag = 1.08 if view == "AP" else 1.0
    heart_rx = rng.uniform(0.145, 0.165) * mag * (1.0 + (0.35 + 0.3 * cm if cm else 0.0))
    heart_ry = rng.uniform(0.11, 0.125) * mag * (1.0 + (0.1 if cm else 0.0))
    heart_cx, heart_cy = 0.54 + (0.025 if cm else 0.0), 0.64
    heart = (((xx - heart_cx) / heart_rx) ** 2 + ((yy - heart_cy) / heart_ry) ** 2) < 1.0
    heart = heart & (yy < np.minimum(domes[0], domes[1]) + 0.02)
    heart_f = cv2.GaussianBlur(heart.astype(np.float32), (0, 0), n / 90)
    img = img * (1 - heart_f) + heart_f * (0.68 + 0.25 * (img - 0.45))
    # below the diaphragm
    abdomen = body & (yy > np.minimum(domes[0], domes[1]) + 0.01) & (yy > 0.6)
    img = np.where(abdomen & (lung < 0.5), np.maximum(img, 0.62), img)
    f = _Film(n, yy, xx, img, bw, lung_cx, lung_rx, lung_ry, lung_cy, dome_base, lungs, lung, markings,
              heart_cx, heart_cy, at_side)
    f.body = body
    return f


def _draw_airspace_findings(f: _Film, present: dict[str, float], rng: np.random.Generator) -> None:
    """Effusion, edema, consolidation, pneumonia, atelectasis, lesions, other opacities."""
    yy, xx, n, lung_cx = f.yy, f.xx, f.n, f.lung_cx
    pe = present.get("Pleural Effusion", 0.0)
    if pe:
        sides = [0, 1] if rng.random() < 0.4 else [int(rng.integers(0, 2))]
        for i in sides:
            cx = lung_cx[i]
            lateral = np.clip((xx - cx) * (1 if i else -1) / f.lung_rx, -1, 1)
            level = f.dome_base - (0.03 + 0.11 * pe) - 0.05 * pe * (lateral + 1)  # meniscus climbs laterally
            fluid = cv2.GaussianBlur((yy > level).astype(np.float32), (0, 0), n / 80)
            f.img += f.in_lung(fluid, i) * (0.26 + 0.1 * pe)
            # fill the costophrenic angle below the lung too
            cp = ((np.abs(xx - (cx + (1 if i else -1) * f.lung_rx * 0.8)) < 0.05) & (yy > level)
                  & (yy < f.dome_base + 0.08) & f.body)
            f.img = np.where(cp, np.maximum(f.img, 0.5), f.img)
    ed = present.get("Edema", 0.0)
    if ed:
        haze = sum(_blob(yy, xx, 0.5, 0.5 + s * 0.12, 0.16, 0.11, sharp=1.0) for s in (-1, 1))
        f.img += f.in_lung(haze) * (0.12 + 0.14 * ed) + f.in_lung(np.abs(_smooth_noise(rng, n, n / 60))) * 0.04 * ed
    co = present.get("Consolidation", 0.0)
    if co:
        i = int(rng.integers(0, 2))
        cy, cx = rng.uniform(0.35, 0.62), lung_cx[i] + rng.uniform(-0.05, 0.05)
        blob = sum(_blob(yy, xx, cy + rng.uniform(-0.04, 0.04), cx + rng.uniform(-0.03, 0.03),
                         rng.uniform(0.05, 0.08), rng.uniform(0.04, 0.06), 1.6) for _ in range(3))
        f.img += f.in_lung(np.clip(blob, 0, 1), i) * (0.26 + 0.14 * co)
    pn = present.get("Pneumonia", 0.0)
    if pn:
        for _ in range(int(rng.integers(3, 6))):
            i = int(rng.integers(0, 2))
            b = _blob(yy, xx, rng.uniform(0.3, 0.68), lung_cx[i] + rng.uniform(-0.07, 0.07), 0.035, 0.03, 1.2)
            f.img += f.in_lung(b, i) * (0.18 + 0.12 * pn)
    at = present.get("Atelectasis", 0.0)
    if at:
        i = f.at_side
        cx = lung_cx[i]
        y0 = rng.uniform(0.58, 0.66)
        xs = np.linspace(cx - 0.09, cx + 0.09, 10)
        ys = y0 + 0.25 * (xs - cx) * (1 if rng.random() < 0.5 else -1)
        f.img += f.in_lung(_line(f.img, np.stack([xs, ys], 1), n, 0.22 + 0.13 * at, 0.018 + 0.01 * at), i)
    ll = present.get("Lung Lesion", 0.0)
    if ll:
        for _ in range(1 + int(rng.random() < 0.3)):
            i = int(rng.integers(0, 2))
            r = rng.uniform(0.022, 0.04)
            b = _blob(yy, xx, rng.uniform(0.3, 0.62), lung_cx[i] + rng.uniform(-0.06, 0.06), r, r, 3.0)
            f.img += f.in_lung(b, i) * (0.25 + 0.15 * ll)
    lo = present.get("Lung Opacity", 0.0)
    if lo and not any(c in present for c in OPACITY_CHILDREN):
        i = int(rng.integers(0, 2))
        b = _blob(yy, xx, rng.uniform(0.35, 0.6), lung_cx[i], 0.1, 0.07, 1.0)
        f.img += f.in_lung(b, i) * (0.14 + 0.1 * lo)


def _draw_pleura_bone_devices(f: _Film, present: dict[str, float], rng: np.random.Generator, view: str) -> None:
    """Pneumothorax, other pleural findings, a rib fracture, support devices, and the AP
    view's scapulae."""
    yy, xx, n, lung_cx, lungs = f.yy, f.xx, f.n, f.lung_cx, f.lungs
    px = present.get("Pneumothorax", 0.0)
    if px:
        i = int(rng.integers(0, 2))
        cx = lung_cx[i]
        # the collapsed lung is the lung outline shrunk towards the hilum; the rim outside it
        # (upper and lateral) is air without lung markings, bounded by a thin visceral pleural line
        k = 1.0 - (0.12 + 0.2 * px)
        hx, hy = cx, f.lung_cy + 0.05
        edge = (np.abs((xx - hx) / (f.lung_rx * k)) ** 2.2
                + np.abs((yy - hy + f.lung_ry * (1 - k) * 0.0) / (f.lung_ry * k)) ** 2.2)
        rim = (edge > 1.0) & (yy < f.lung_cy + 0.1)
        rim_f = cv2.GaussianBlur(rim.astype(np.float32), (0, 0), n / 180) * lungs[i]
        f.img = f.img - rim_f * (f.markings + 0.08 + 0.05 * px)
        line = (np.abs(edge - 1.0) < 0.06) & (yy < f.lung_cy + 0.1)
        f.img += cv2.GaussianBlur(line.astype(np.float32), (0, 0), n / 220) * lungs[i] * 0.14
    po = present.get("Pleural Other", 0.0)
    if po:
        i = int(rng.integers(0, 2))
        cx = lung_cx[i]
        edge = np.abs((xx - cx) / f.lung_rx) ** 2.2 + np.abs((yy - f.lung_cy) / f.lung_ry) ** 2.2
        strip = ((edge > 0.62) & ((xx - cx) * (1 if i else -1) > 0.02) & (yy > 0.28)).astype(np.float32)
        f.img += cv2.GaussianBlur(strip, (0, 0), n / 150) * lungs[i] * (0.22 + 0.12 * po)
    fr = present.get("Fracture", 0.0)
    if fr:
        i = int(rng.integers(0, 2))
        k = int(rng.integers(2, 7))
        fx = 0.5 + (1 if i else -1) * f.bw / 2 * rng.uniform(0.55, 0.8)
        fy = 0.2 + k * 0.062 + 0.09 * ((fx - 0.5) / 0.4) ** 2 - 0.02 * k * abs(fx - 0.5)
        f.img += _blob(yy, xx, fy, fx, 0.018, 0.018, 2.0) * (0.3 + 0.15 * fr)
        f.img -= _blob(yy, xx, fy, fx + 0.012, 0.012, 0.006, 3.0) * 0.12
    if "Support Devices" in present:
        kind = rng.integers(0, 3)
        if kind in (0, 2):  # endotracheal + nasogastric tube
            f.img += _line(f.img, np.array([[0.5, 0.0], [0.5, 0.12], [0.505, 0.3]]), n, 0.5, 0.012)
            f.img += _line(f.img, np.array([[0.52, 0.0], [0.52, 0.4], [0.56, 0.72], [0.62, 0.82]]), n, 0.45, 0.01)
        if kind in (1, 2):  # pacemaker / port with a lead to the heart
            px0, py0 = rng.uniform(0.25, 0.35), rng.uniform(0.2, 0.26)
            box = (np.abs(xx - px0) < 0.045) & (np.abs(yy - py0) < 0.03)
            f.img = np.where(box, 1.0, f.img)
            f.img += _line(f.img, np.array([[px0, py0], [0.45, 0.35], [f.heart_cx, f.heart_cy - 0.02]]), n, 0.45, 0.01)
    if view == "AP":  # scapulae projected over the lungs, portable technique
        for s in (-1, 1):
            f.img += f.in_lung(_blob(yy, xx, 0.3, 0.5 + s * 0.38, 0.14, 0.06, 1.0)) * 0.06


def render_lateral(present: dict[str, float], rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """One synthetic lateral view (anterior on the image left)."""
    n = size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / (n - 1)
    xx = xx - rng.uniform(-0.02, 0.02)
    yy = yy - rng.uniform(-0.02, 0.02)
    img = np.full((n, n), 0.06, np.float32)
    body = (np.abs((xx - 0.52) / 0.4) ** 3 + np.abs((yy - 0.58) / 0.6) ** 3) < 1.0
    img[body] = 0.58
    dome = 0.74 + 0.05 * ((xx - 0.5) / 0.3) ** 2 - 0.04 * (xx - 0.5)
    lung = ((np.abs((xx - 0.52) / 0.28) ** 2.2 + np.abs((yy - 0.47) / 0.3) ** 2.2) < 1.0) & (yy < dome)
    lung = cv2.GaussianBlur(lung.astype(np.float32), (0, 0), n / 128)
    img = img - 0.3 * lung + 0.03 * _smooth_noise(rng, n, n / 90) * lung
    spine = (np.abs(xx - 0.84) < 0.05) & (yy > 0.12) & body
    img = np.maximum(img, spine.astype(np.float32) * 0.75)
    for k in range(10):  # vertebral bodies
        img -= ((np.abs(yy - 0.15 - k * 0.07) < 0.006) & spine).astype(np.float32) * 0.1
    cm = present.get("Cardiomegaly", 0.0)
    hr = rng.uniform(0.13, 0.15) * (1.0 + (0.3 + 0.25 * cm if cm else 0.0))
    heart = (((xx - 0.36 - (0.04 if cm else 0)) / hr) ** 2 + ((yy - 0.6) / 0.13) ** 2) < 1.0
    img = np.maximum(img, cv2.GaussianBlur((heart & (yy < dome + 0.02)).astype(np.float32), (0, 0), n / 90) * 0.7)
    img = np.where(body & (yy > dome), np.maximum(img, 0.62), img)
    pe = present.get("Pleural Effusion", 0.0)
    if pe:  # posterior costophrenic sulcus fills first
        level = 0.74 - (0.06 + 0.16 * pe) + 0.25 * (0.8 - xx) * pe * 0.5
        fluid = cv2.GaussianBlur(((yy > level) & (xx > 0.5)).astype(np.float32), (0, 0), n / 80)
        img += fluid * lung * (0.26 + 0.1 * pe)
    ed = present.get("Edema", 0.0)
    if ed:
        img += _blob(yy, xx, 0.48, 0.55, 0.18, 0.14, 1.0) * lung * (0.1 + 0.12 * ed)
    for name in ("Consolidation", "Pneumonia", "Lung Lesion"):
        s = present.get(name, 0.0)
        if s and rng.random() < 0.7:
            r = 0.03 if name == "Lung Lesion" else 0.06
            img += _blob(yy, xx, rng.uniform(0.3, 0.65), rng.uniform(0.35, 0.7), r, r, 1.6) * lung * (0.18 + 0.12 * s)
    if "Support Devices" in present:
        img += _line(img, np.array([[0.45, 0.0], [0.47, 0.3], [0.5, 0.75], [0.45, 0.85]]), n, 0.45, 0.01)
    return _finish(img, rng, n)


def _finish(img: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    """Acquisition: blur, noise, exposure / gamma, small rotation."""
    img = cv2.GaussianBlur(img, (0, 0), 0.5 * n / 128)
    img = img + rng.normal(0, 0.012, img.shape).astype(np.float32)
    img = np.clip(img, 0, 1)
    gain, offset, gamma = rng.uniform(0.9, 1.1), rng.uniform(-0.04, 0.04), rng.uniform(0.85, 1.15)
    img = np.clip(gain * img + offset, 0, 1) ** gamma
    angle = rng.uniform(-3, 3)
    m = cv2.getRotationMatrix2D((n / 2, n / 2), angle, 1.0)
    img = cv2.warpAffine(img.astype(np.float32), m, (n, n), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=float(img[0, 0]))
    return np.clip(img, 0, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------

README = """SYNTHETIC DATA - NOT REAL PATIENTS

This folder was written by `cxrkit data demo`. Every image is drawn procedurally by
cxrkit (cxrkit/data/demo.py); no real radiograph or patient record is involved. The layout
and label conventions copy CheXpert (train.csv: 1.0 / 0.0 / -1.0 uncertain / blank not
mentioned; valid.csv and test.csv: fully labelled), so every cxrkit command can be tried
on it. Patients never appear in two splits; test.csv is for reporting only.

seed: {seed}   studies: {n_studies}   image size: {size} px
train.csv: {n_train} images   valid.csv: {n_valid} images   test.csv: {n_test} images (held out)
synthetic_truth.csv: the true 0/1 findings of every image (for checking models).
"""


def generate_demo(out_dir: str | Path, n_studies: int = 400, seed: int = 0, size: int = 128,
                  valid_fraction: float = 0.2, lateral_fraction: float = 0.4, show_progress: bool = True,
                  test_fraction: float = 0.2) -> DemoDataset:
    """Write the synthetic demo dataset to ``out_dir``: ``train.csv``, ``valid.csv`` and
    ``test.csv`` (CheXpert format, paths relative to ``out_dir``; valid and test fully
    labelled, patients disjoint across splits), images under ``synthetic-cxr-demo/``, a README
    and ``synthetic_truth.csv``."""
    if n_studies < 10:
        raise ValueError("n_studies must be at least 10")
    if not 0 < valid_fraction < 1 or not 0 <= test_fraction < 1 or valid_fraction + test_fraction >= 1:
        raise ValueError("valid_fraction and test_fraction must be in [0, 1) and leave room for training")
    if size < 32 or size > 1024:
        raise ValueError("size must be in 32..1024")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # patients with one or two studies; split by patient so valid never sees a train patient
    studies_per_patient = []
    while sum(studies_per_patient) < n_studies:
        studies_per_patient.append(min(1 + int(rng.random() < 0.25), n_studies - sum(studies_per_patient)))
    n_pat = len(studies_per_patient)
    n_valid_pat = max(2, int(round(n_pat * valid_fraction)))
    n_test_pat = int(round(n_pat * test_fraction))
    rows: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    truth_rows = []
    jobs = []
    for pid in range(n_pat):
        split = ("test" if pid >= n_pat - n_test_pat else "valid" if pid >= n_pat - n_test_pat - n_valid_pat
                 else "train")
        for k in range(studies_per_patient[pid]):
            jobs.append((split, pid + 1, k + 1))
    for split, pid, k in progress(jobs, "synthetic studies", enabled=show_progress):
        srng = np.random.default_rng([seed, pid, k])
        present = _sample_findings(srng)
        labels = _report_labels(present, srng) if split == "train" else _true_labels(present)
        sex = "Female" if srng.random() < 0.5 else "Male"
        age = int(np.clip(srng.normal(62, 16), 18, 95))
        ap = srng.random() < (0.65 if "Support Devices" in present else 0.35)
        views = [("frontal", "AP" if ap else "PA")]
        if srng.random() < lateral_fraction:
            views.append(("lateral", ""))
        for v, (kind, appa) in enumerate(views, start=1):
            rel = f"{DATASET_DIR}/{split}/patient{pid:05d}/study{k}/view{v}_{kind}.png"
            img = (render_frontal(present, srng, size, appa) if kind == "frontal"
                   else render_lateral(present, srng, size))
            dst = out / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if not cv2.imwrite(str(dst), np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)):
                raise OSError(f"could not write {dst}")
            row = {"Path": rel, "Sex": sex, "Age": age, "Frontal/Lateral": kind.capitalize(), "AP/PA": appa}
            row.update({c: labels[c] for c in CHEXPERT_14})
            rows[split].append(row)
            truth = {"Path": rel, "split": split}
            truth.update({c: present.get(c, 0.0) for c in CHEXPERT_14 if c != "No Finding"})
            truth_rows.append(truth)
    cols = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_14]
    paths = {}
    for split in ("train", "valid", "test"):
        if split == "test" and not rows["test"]:
            continue
        df = pd.DataFrame(rows[split], columns=cols)
        paths[split] = out / f"{split}.csv"
        with atomic_write(paths[split]) as tmp:
            df.to_csv(tmp, index=False, float_format="%.1f")
    truth_df = pd.DataFrame(truth_rows)
    with atomic_write(out / "synthetic_truth.csv") as tmp:
        truth_df.to_csv(tmp, index=False, float_format="%.3f")
    (out / "README.txt").write_text(README.format(seed=seed, n_studies=n_studies, size=size,
                                                  n_train=len(rows["train"]), n_valid=len(rows["valid"]),
                                                  n_test=len(rows["test"])))
    log.info("wrote %d train, %d valid and %d test synthetic images to %s", len(rows["train"]), len(rows["valid"]),
             len(rows["test"]), out)
    return DemoDataset(out, paths["train"], paths["valid"], len(rows["train"]), len(rows["valid"]),
                       paths.get("test"), len(rows["test"]))


def contact_sheet(images: list[np.ndarray], titles: list[str], path: str | Path, cols: int = 6) -> Path:
    """A PNG grid of images with titles (for looking at the demo data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import textwrap

    rows = math.ceil(len(images) / cols)
    wrapped = [textwrap.fill(t, 24) for t in titles]  # long label lists wrap instead of running into neighbours
    lines = max((w.count("\n") + 1 for w in wrapped), default=1)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, (2.2 + 0.14 * lines) * rows))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, im, t in zip(np.atleast_1d(axes).ravel(), images, wrapped):
        ax.imshow(im, cmap="gray", vmin=0, vmax=1)
        ax.set_title(t, fontsize=7)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return Path(path)


def demo_to_dicom(data_dir: str | Path, out_dir: str | Path, split: str = "test") -> tuple[int, int]:
    """The films of one split of the synthetic demo data as CR DICOM files, as a hospital's
    export would hold them: ``OUT/<patient>/<study>/<view>.dcm``, one StudyInstanceUID per demo
    study (the same on every run), ViewPosition PA / AP / LL, BodyPartExamined CHEST, a synthetic
    patient (``DEMO-...``, no real person). For trying ``predict --sr`` and ``pacs listen`` on a
    fresh machine. Returns (files, studies)."""
    import cv2
    import pandas as pd
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from ..errors import CxrkitError
    from ..utils import atomic_write

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    table = data_dir / f"{split}.csv"
    if not table.is_file():
        raise CxrkitError(f"{table}: not found; DATA_DIR is a folder written by `cxrkit data demo` or `cxrkit demo` "
                          f"(its data/ folder)")
    t = pd.read_csv(table)
    studies: set[str] = set()
    n = 0
    for _, row in t.iterrows():
        rel = Path(str(row["Path"]))
        src = data_dir / rel  # demo tables' paths are relative to their folder
        img = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise CxrkitError(f"{src}: demo image missing or unreadable")
        patient, study = rel.parts[-3], rel.parts[-2]
        key = f"cxrkit-demo/{patient}/{study}"
        lateral = str(row.get("Frontal/Lateral", "")).lower() == "lateral"
        view = "LL" if lateral else (str(row.get("AP/PA", "")) or "PA").upper()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
        meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[key, rel.name])
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(src), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[key])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[key, view])
        ds.PatientName, ds.PatientID = "Synthetic^Demo", f"DEMO-{patient}"
        ds.PatientBirthDate = ds.PatientSex = ds.StudyDate = ds.StudyTime = ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ds.StudyID = ""
        ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", view
        ds.Manufacturer = "cxrkit synthetic demo"
        ds.PatientOrientation = ""  # type 2C, unknown for a drawn film
        ds.SeriesNumber, ds.InstanceNumber = 1, 1
        ds.ImageComments = "SYNTHETIC image drawn by cxrkit's demo generator: not a patient, not for diagnosis"
        ds.Rows, ds.Columns = img.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = img.tobytes()
        dst = out_dir / patient / study / f"{rel.stem}.dcm"
        dst.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(dst) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        studies.add(key)
        n += 1
    return n, len(studies)
