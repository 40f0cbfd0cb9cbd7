import hashlib

import cv2
import numpy as np
import pandas as pd

from cxrkit.data.demo import DATASET_DIR, generate_demo, render_frontal
from cxrkit.data.tables import load_table, resolve_image_paths
from cxrkit.labels import CHEXPERT_14


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_deterministic_given_seed(tmp_path):
    a = generate_demo(tmp_path / "a", n_studies=20, seed=3, size=48, show_progress=False)
    b = generate_demo(tmp_path / "b", n_studies=20, seed=3, size=48, show_progress=False)
    c = generate_demo(tmp_path / "c", n_studies=20, seed=4, size=48, show_progress=False)
    assert _digest(a.root) == _digest(b.root) != _digest(c.root)


def test_layout_and_labels_follow_chexpert(demo_data):
    train = load_table(demo_data / "train.csv")
    valid = load_table(demo_data / "valid.csv")
    test = load_table(demo_data / "test.csv")
    assert train.format == valid.format == test.format == "chexpert" and train.classes == CHEXPERT_14
    assert not np.isnan(test.labels).any() and not set(test.meta["patient"]) & set(train.meta["patient"])
    assert not set(test.meta["patient"]) & set(valid.meta["patient"])
    assert all(p.startswith(f"{DATASET_DIR}/train/patient") for p in train.paths)
    c = train.counts()
    assert c["uncertain"].sum() > 0 and c["unknown"].sum() > 0  # -1.0 and blanks in train
    assert not np.isnan(valid.labels).any() and not (valid.labels == -1).any()  # valid fully labelled
    # No Finding is 1 or blank, as in CheXpert
    nf = train.labels[:, 0]
    assert set(np.unique(nf[~np.isnan(nf)])) == {1.0}
    # long tail: most frequent class has many times the positives of the rarest
    pos = c["positive"][1:]
    assert pos.max() >= 8 * max(1, pos.min())
    # several views per study, patients never shared between splits
    assert train.meta.groupby("study").size().max() >= 2
    assert set(train.meta["view"]) >= {"PA", "AP", "LATERAL"}
    assert not set(train.meta["patient"]) & set(valid.meta["patient"])
    paths, ok = resolve_image_paths(train)
    assert ok.all()
    assert "SYNTHETIC" in (demo_data / "README.txt").read_text()


def test_findings_are_visible_in_the_pixels(tmp_path):
    """A linear model on 24x24 thumbnails already separates the big findings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict

    generate_demo(tmp_path, n_studies=300, seed=5, size=64, show_progress=False)
    truth = pd.read_csv(tmp_path / "synthetic_truth.csv")
    fr = truth[truth.Path.str.contains("frontal")]
    x = np.stack([cv2.resize(cv2.imread(str(tmp_path / p), 0), (24, 24), interpolation=cv2.INTER_AREA).ravel() / 255.0
                  for p in fr.Path])
    for name in ("Cardiomegaly", "Pleural Effusion", "Support Devices"):
        y = (fr[name] > 0).astype(int).to_numpy()
        p = cross_val_predict(LogisticRegression(C=0.1, max_iter=2000), x, y, cv=5, method="predict_proba")[:, 1]
        assert roc_auc_score(y, p) > 0.85, name


def test_cardiomegaly_widens_the_heart():
    def heart_width(img):
        row = img[int(0.62 * img.shape[0])]
        return (row > 0.58).sum()

    widths = {}
    for label, present in (("normal", {}), ("cm", {"Cardiomegaly": 1.0})):
        widths[label] = np.mean([heart_width(render_frontal(present, np.random.default_rng(s), 128)) for s in range(10)])
    assert widths["cm"] > 1.25 * widths["normal"]
