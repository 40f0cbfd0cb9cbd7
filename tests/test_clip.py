"""CLIP backbones and zero-shot classes (issue 26): open_clip folders the test creates in the
published layout (a tiny CLIP with open_clip's own text tower; a BiomedCLIP-shaped one with a
timm ViT image tower, a Hugging Face BERT text tower and a pickled .bin state dict), checked
against open_clip itself loading the same folder."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import SHARED_DATA, real_film, run_cli_inprocess

open_clip = pytest.importorskip("open_clip")

from cxrkit.errors import ConfigError  # noqa: E402
from cxrkit.models.clip import CLIP_MEAN, CLIP_STD, class_prompts  # noqa: E402
from cxrkit.models.registry import BackboneSpec, build_backbone  # noqa: E402

TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
PRE = {"mean": CLIP_MEAN, "std": CLIP_STD}
WORDS = ("no a chest x ray showing with findings consistent evidence of scoliosis osteopenia bulla infarction "
         "adenopathy goiter curved spine normal thin bones effusion").split()


def _write(folder: Path, model_cfg: dict, state: dict, bin_file: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if bin_file:  # BiomedCLIP's published file: a pickled state dict (read with weights_only)
        torch.save(state, folder / "open_clip_pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": PRE}))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("clip") / "tiny"
    torch.manual_seed(0)
    _write(d, TINY, open_clip.CLIP(**TINY).state_dict())
    return d


@pytest.fixture(scope="module")
def biomedclip_like(tmp_path_factory) -> tuple[Path, Path]:
    """(the folder as a user downloads it: open_clip_config.json naming the Hub text model,
    open_clip_pytorch_model.bin, the BERT config and tokenizer files beside them; the same
    files with the config pointing at the folder, which open_clip itself loads offline)."""
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("biomedclip")
    ref = root / "ref"
    ref.mkdir()
    (ref / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    transformers.BertTokenizer(str(ref / "vocab.txt"), do_lower_case=True).save_pretrained(ref)
    transformers.BertConfig(vocab_size=5 + len(WORDS), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=32).save_pretrained(ref)
    vision = {"timm_model_name": "vit_tiny_patch16_224", "timm_model_pretrained": False, "timm_pool": "",
              "timm_proj": "linear", "image_size": 224}  # open_clip's timm tower is built at the timm model's size
    text = {"hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 16}
    local = {"embed_dim": 16, "vision_cfg": vision, "text_cfg": {**text, "hf_model_name": str(ref),
                                                                  "hf_tokenizer_name": str(ref)}}
    torch.manual_seed(1)
    model = open_clip.CustomTextCLIP(**{**local, "text_cfg": {**local["text_cfg"], "hf_model_pretrained": False}})
    _write(ref, local, model.state_dict(), bin_file=True)
    user = root / "biomedclip"
    shutil.copytree(ref, user)
    hub = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
    _write(user, {**local, "text_cfg": {**text, "hf_model_name": hub, "hf_tokenizer_name": hub}},
           model.state_dict(), bin_file=True)
    return user, ref


def _film(size: int = 32) -> torch.Tensor:
    """A real chest film as the CLIP image tower takes it (3 channels, CLIP mean / std)."""
    x = real_film(size)
    return torch.from_numpy(np.stack([(x - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD)])[None].astype(np.float32))


def _size(folder: Path) -> int:
    return json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]["image_size"]


def _arch(folder: Path) -> dict:
    cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    return {"embed_dim": cfg["embed_dim"], "vision_cfg": cfg["vision_cfg"]}


def _folders(request, tiny_clip, biomedclip_like) -> tuple[Path, Path]:
    return (tiny_clip, tiny_clip) if request.param == "tiny" else biomedclip_like


@pytest.fixture(params=["tiny", "biomedclip-like"])
def folders(request, tiny_clip, biomedclip_like):
    return _folders(request, tiny_clip, biomedclip_like)


def test_clip_image_features_equal_open_clip(folders):
    user, ref_folder = folders
    ref = open_clip.create_model(f"local-dir:{ref_folder}").eval()
    x = _film(_size(user))
    for normalize in (True, False):
        net, dim = build_backbone(BackboneSpec("biomedclip", pretrained=True, weights=str(user), in_chans=3,
                                               kwargs={**_arch(user), "normalize": normalize}))
        with torch.no_grad():
            ours, want = net.eval()(x), ref.encode_image(x, normalize=normalize)
        assert dim == 16 and ours.shape == want.shape == (1, 16)
        assert float((ours - want).abs().max()) < 1e-5
        assert float(want.abs().max()) > 0.05  # real activations


def test_zero_shot_scores_equal_open_clip_similarity(folders, tmp_path, capsys):
    """`cxrkit zeroshot`: each class logit equals scale * (cos(image, mean positive text) -
    cos(image, mean negative text)) computed with open_clip's encode_image / encode_text on
    the same folder, and the saved model predicts it without the folder."""
    from cxrkit.artifact import load_model

    user, ref_folder = folders
    prompts = {"Scoliosis": {"positive": ["scoliosis", "curved spine"], "negative": ["no scoliosis", "normal spine"]},
               "Osteopenia": ["osteopenia", "thin bones"], "Bulla": None}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(prompts, sort_keys=False))
    m = tmp_path / "zs"
    r = run_cli_inprocess(capsys, "zeroshot", str(user), "--prompts", str(tmp_path / "p.yaml"), "--out", str(m))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 class(es) from prompts" in r.stdout
    ref = open_clip.create_model(f"local-dir:{ref_folder}").eval()
    tok = open_clip.get_tokenizer(f"local-dir:{ref_folder}")
    x = _film(_size(user))
    with torch.no_grad():
        img = ref.encode_image(x, normalize=True)[0]
        want = []
        for c, given in prompts.items():
            p = class_prompts(c, given)
            sides = []
            for texts in (p["positive"], p["negative"]):
                t = ref.encode_text(tok(texts), normalize=True).mean(0)
                sides.append(t / t.norm())
            want.append(float(ref.logit_scale.exp() * (img @ sides[0] - img @ sides[1])))
    copy = tmp_path / "moved"
    shutil.copytree(m, copy)
    shutil.move(str(user), str(user) + ".away")  # the hospital has only the saved model
    try:
        loaded = load_model(copy)
        with torch.no_grad():
            got = loaded.model.eval()(x)[0].numpy()
    finally:
        shutil.move(str(user) + ".away", str(user))
    assert np.abs(got - np.array(want)).max() < 1e-4
    assert np.abs(np.array(want)).max() > 1e-3
    meta = json.loads((m / "model.json").read_text())
    assert meta["classes"] == ["Scoliosis", "Osteopenia", "Bulla"]
    zs = meta["extra"]["zero_shot"]["classes"]
    assert zs["Bulla"]["negative"][0] == "no bulla" and zs["Osteopenia"]["positive"] == ["osteopenia", "thin bones"]
    assert meta["preprocessing"]["size"] == _size(user) and meta["preprocessing"]["channels"] == 3
    assert meta["preprocessing"]["resize"] == "center-crop"


def test_not_an_open_clip_folder_is_one_clear_line(tiny_clip, tmp_path, capsys):
    (tmp_path / "p.yaml").write_text("Bulla:\n")
    bad = tmp_path / "bad"
    cases = []
    bad.mkdir()
    cases.append((bad, "expected an open_clip folder"))  # empty
    cfg_only = tmp_path / "cfg_only"
    shutil.copytree(tiny_clip, cfg_only)
    (cfg_only / "open_clip_model.safetensors").unlink()
    cases.append((cfg_only, "expected an open_clip folder"))
    broken_json = tmp_path / "broken_json"
    shutil.copytree(tiny_clip, broken_json)
    (broken_json / "open_clip_config.json").write_text("{not json")
    cases.append((broken_json, "not readable JSON"))
    no_model_cfg = tmp_path / "no_model_cfg"
    shutil.copytree(tiny_clip, no_model_cfg)
    (no_model_cfg / "open_clip_config.json").write_text(json.dumps({"preprocess_cfg": PRE}))
    cases.append((no_model_cfg, "no model_cfg"))
    junk = tmp_path / "junk_weights"
    shutil.copytree(tiny_clip, junk)
    (junk / "open_clip_model.safetensors").write_bytes(b"\x00" * 64)
    cases.append((junk, "not a readable open_clip checkpoint"))
    for folder, msg in cases:
        r = run_cli_inprocess(capsys, "zeroshot", str(folder), "--prompts", str(tmp_path / "p.yaml"),
                              "--out", str(tmp_path / "o"))
        assert r.returncode != 0 and msg in r.stderr, (folder, r.stderr)
        assert "Traceback" not in r.stderr + r.stdout and len(r.stderr.strip().splitlines()) == 1
    # a folder with another image tower than the backbone's kwargs: what to set
    with pytest.raises(ConfigError, match="set model.backbone_kwargs"):
        build_backbone(BackboneSpec("biomedclip", pretrained=True, weights=str(tiny_clip), in_chans=3, kwargs={}))
    (tmp_path / "bad.yaml").write_text("Bulla: 3\n")
    r = run_cli_inprocess(capsys, "zeroshot", str(tiny_clip), "--prompts", str(tmp_path / "bad.yaml"),
                          "--out", str(tmp_path / "o"))
    assert r.returncode != 0 and "prompts for 'Bulla'" in r.stderr


def test_zero_shot_classes_reach_every_output_and_the_cxr_lt_task2_header(tiny_clip, demo_data, tmp_path, capsys):
    """A model of CXR-LT 2026 task 2's unseen classes: predict's CSV, FHIR and the CXR-LT
    leaderboard entry (a sample submission with the task-2 header) carry every class, with
    the probabilities predict gives."""
    pytest.importorskip("fhir.resources")
    from cxrkit.labels import CXR_LT_2026_TASK2

    (tmp_path / "p.yaml").write_text(yaml.safe_dump(list(CXR_LT_2026_TASK2)))
    m = tmp_path / "zs"
    r = run_cli_inprocess(capsys, "zeroshot", str(tiny_clip), "--prompts", str(tmp_path / "p.yaml"), "--out", str(m),
                          "--valid", str(demo_data / "valid.csv"))  # no labels for any of them there
    assert r.returncode != 0 and "has none of the model's classes" in r.stderr
    r = run_cli_inprocess(capsys, "zeroshot", str(tiny_clip), "--prompts", str(tmp_path / "p.yaml"), "--out", str(m))
    assert r.returncode == 0, r.stderr
    assert json.loads((m / "model.json").read_text())["thresholds"] == [0.5] * len(CXR_LT_2026_TASK2)
    # with a labelled table for one of the classes: its threshold and AUC come from it
    (tmp_path / "p2.yaml").write_text("Pleural Effusion:\nScoliosis:\n")
    r = run_cli_inprocess(capsys, "zeroshot", str(tiny_clip), "--prompts", str(tmp_path / "p2.yaml"), "--out",
                          str(tmp_path / "zs2"), "--valid", str(demo_data / "valid.csv"))
    assert r.returncode == 0 and "valid mAUC" in r.stdout, r.stderr
    summary = json.loads((tmp_path / "zs2" / "zeroshot" / "summary.json").read_text())
    assert summary["per_class_auc"]["Pleural Effusion"] is not None and summary["n_valid"] > 0
    assert json.loads((tmp_path / "zs2" / "model.json").read_text())["thresholds"][1] == 0.5
    from cxrkit.ensemble import load_predictor
    from cxrkit.evaluate import evaluate_table

    ev = evaluate_table(load_predictor(tmp_path / "zs2", engine="torch"), demo_data / "valid.csv",
                        show_progress=False)
    assert ev["zero_shot_classes"] == ["Pleural Effusion"]  # the one the table labels
    assert [c["zero_shot"] for c in ev["classes"]] == [True]
    assert ev["mAUC"] == pytest.approx(summary["per_class_auc"]["Pleural Effusion"], abs=1e-6)
    dicoms = sorted((SHARED_DATA / "dicom").glob("*.dcm"))
    if not dicoms:
        pytest.skip("no real DICOMs in ../shared/data/dicom")
    pytest.importorskip("highdicom")
    r = run_cli_inprocess(capsys, "predict", str(m), *map(str, dicoms), "--out", str(tmp_path / "d.csv"),
                          "--sr", str(tmp_path / "sr"), "--fhir", str(tmp_path / "fhir"), "--engine", "torch")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "d.csv")))
    assert len(rows) == len(dicoms) and all(c in rows[0] for c in CXR_LT_2026_TASK2)
    bundles = sorted((tmp_path / "fhir").glob("*.json"))
    srs = sorted((tmp_path / "sr").rglob("*.dcm"))
    assert bundles and srs
    import pydicom

    for text in (bundles[0].read_text(), str(pydicom.dcmread(srs[0]))):
        assert all(c in text for c in CXR_LT_2026_TASK2)
    films = sorted((demo_data / "synthetic-cxr-demo" / "test").rglob("*.png"))[:4]
    r = run_cli_inprocess(capsys, "predict", str(m), *map(str, films), "--out", str(tmp_path / "p.csv"),
                          "--engine", "torch")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    # the leaderboard entry: header = id + the task's classes, in the sample's order
    sample = tmp_path / "sample.csv"
    order = list(reversed(CXR_LT_2026_TASK2))
    with open(sample, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dicom_id", *order])
        for i, _ in enumerate(films):
            w.writerow([f"img{i}", *["0"] * len(order)])
    inp = tmp_path / "input.csv"
    with open(inp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["dicom_id", "path"])
        for i, p in enumerate(films):
            w.writerow([f"img{i}", str(p)])
    pytest.importorskip("onnxruntime")
    r = run_cli_inprocess(capsys, "export", str(m), "--onnx")  # the leaderboard entry runs the ONNX export
    assert r.returncode == 0, r.stderr
    from cxrkit.leaderboard.submit import main as submit_main

    code = submit_main(["--model", str(m), "cxr-lt", str(inp), str(tmp_path / "sub"), "--sample-submission",
                        str(sample)])
    assert code in (0, None)
    sub = list(csv.reader(open(tmp_path / "sub" / "submission.csv")))
    assert sub[0] == ["dicom_id", *order] and len(sub) == 1 + len(films)
    first = {k: float(v) for k, v in zip(sub[0][1:], sub[1][1:])}
    pred_first = next(r for r in rows if r["path"] == str(films[0]))
    for c in CXR_LT_2026_TASK2:  # onnxruntime's entry vs predict's PyTorch: the same probabilities
        assert first[c] == pytest.approx(float(pred_first[c]), abs=1e-4)


def test_probe_adds_zero_shot_classes_for_the_long_tail(tiny_clip, demo_data, tmp_path, capsys):
    """`probe --zero-shot`: a class the training table lacks gets its prompt row (equal to
    `zeroshot`'s), a prompt class with training positives keeps its fitted row."""
    from cxrkit.artifact import load_model
    from cxrkit.cft.features import head_rows
    from cxrkit.models.clip import zero_shot_rows

    arch = _arch(tiny_clip)
    cfg = {"name": "clip-probe", "label_space": "chexpert",
           "data": {"train": {"table": str(demo_data / "train.csv")}, "valid": {"table": str(demo_data / "valid.csv")}},
           "preprocessing": {"size": 32, "channels": 3, "mean": CLIP_MEAN, "std": CLIP_STD, "resize": "center-crop"},
           "model": {"backbone": "biomedclip", "pretrained": True, "weights": str(tiny_clip), "in_chans": 3,
                     "backbone_kwargs": arch}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    prompts = {"Scoliosis": ["scoliosis"], "Pleural Effusion": ["pleural effusion"]}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(prompts, sort_keys=False))
    out = tmp_path / "probe"
    r = run_cli_inprocess(capsys, "probe", str(tmp_path / "c.yaml"), str(demo_data / "train.csv"),
                          str(demo_data / "valid.csv"), "--out", str(out), "--zero-shot", str(tmp_path / "p.yaml"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "zero-shot from prompts: Scoliosis" in r.stdout
    m = load_model(out)
    assert m.classes[-1] == "Scoliosis" and "Pleural Effusion" in m.classes
    assert list(m.meta.extra["zero_shot"]["classes"]) == ["Scoliosis"]
    w, b = head_rows(m.model)
    zw, _ = zero_shot_rows(tiny_clip, {"Scoliosis": class_prompts("Scoliosis", ["scoliosis"])})
    assert np.abs(w[-1] - zw[0].numpy()).max() < 1e-6 and b[-1] == 0
    pe = m.classes.index("Pleural Effusion")
    rec = m.meta.extra["probe"]["classes"][pe]
    assert rec["n_train_pos"] > 0 and rec["C"] is not None  # fitted, not replaced
    # prompts only for classes with training positives: a warning, the probe's model as without them
    (tmp_path / "p_known.yaml").write_text("Pleural Effusion: [pleural effusion]\n")
    r = run_cli_inprocess(capsys, "probe", str(tmp_path / "c.yaml"), str(demo_data / "train.csv"),
                          str(demo_data / "valid.csv"), "--out", str(tmp_path / "probe2"), "--zero-shot",
                          str(tmp_path / "p_known.yaml"))
    assert r.returncode == 0, r.stderr
    m2 = load_model(tmp_path / "probe2")
    assert "zero_shot" not in m2.meta.extra and m2.classes == m.classes[:-1]
    assert np.abs(head_rows(m2.model)[0] - w[:-1]).max() < 1e-6
    # a backbone that is not a CLIP image tower cannot take prompt rows
    cfg["model"] = {"backbone": "tiny-cnn", "in_chans": 1, "backbone_kwargs": {"widths": [8, 16, 32]}}
    cfg["preprocessing"] = {"size": 32, "channels": 1, "mean": [0.5], "std": [0.25]}
    (tmp_path / "c2.yaml").write_text(yaml.safe_dump(cfg))
    r = run_cli_inprocess(capsys, "probe", str(tmp_path / "c2.yaml"), str(demo_data / "train.csv"),
                          str(demo_data / "valid.csv"), "--out", str(tmp_path / "p2"), "--zero-shot",
                          str(tmp_path / "p.yaml"))
    assert r.returncode != 0 and "CLIP image tower" in r.stderr


def test_a_training_config_must_use_the_clip_preprocessing(tiny_clip, demo_data):
    from cxrkit.train.config import load_config

    raw = {"name": "c", "data": {"train": {"table": str(demo_data / "train.csv")},
                                 "valid": {"table": str(demo_data / "valid.csv")}},
           "preprocessing": {"size": 32, "channels": 3, "mean": CLIP_MEAN, "std": CLIP_STD, "resize": "center-crop"},
           "model": {"backbone": "biomedclip", "pretrained": True, "weights": str(tiny_clip), "in_chans": 3,
                     "backbone_kwargs": _arch(tiny_clip)}}
    assert load_config(raw=raw).model_config.backbone == "biomedclip"
    raw["preprocessing"] = {"size": 64, "channels": 3, "mean": CLIP_MEAN, "std": CLIP_STD}
    with pytest.raises(ConfigError, match=r"biomedclip expects its checkpoint's input convention.*size: 32"):
        load_config(raw=raw)
    raw["preprocessing"] = {"size": 32, "channels": 1, "mean": [0.5], "std": [0.25]}
    raw["model"]["in_chans"] = 1
    with pytest.raises(ConfigError, match="biomedclip"):
        load_config(raw=raw)


def test_the_shipped_biomedclip_template_and_task2_prompts(tiny_clip, tmp_path, monkeypatch):
    from cxrkit.labels import CXR_LT_2026_TASK2
    from cxrkit.models.clip import read_prompts
    from cxrkit.train.config import load_config

    root = Path(__file__).resolve().parents[1] / "configs" / "foundation"
    prompts = read_prompts(root / "cxr_lt_2026_task2_prompts.yaml")
    assert list(prompts) == list(CXR_LT_2026_TASK2)  # the task's header, in its order
    assert all(len(p["positive"]) == 3 and len(p["negative"]) == 3 for p in prompts.values())
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CXRKIT_WEIGHTS", raising=False)
    with pytest.raises(ConfigError, match=r"weights/biomedclip: expected an open_clip folder"):
        load_config(root / "biomedclip_probe.yaml")
    shutil.copytree(tiny_clip, tmp_path / "w" / "biomedclip")
    monkeypatch.setenv("CXRKIT_WEIGHTS", str(tmp_path / "w"))
    cfg = load_config(root / "biomedclip_probe.yaml", overrides=[f"model.backbone_kwargs={json.dumps(_arch(tiny_clip))}",
                                                                  "preprocessing.size=32"])
    assert cfg.model_config.backbone == "biomedclip" and cfg.model_config.weights == str(tmp_path / "w" / "biomedclip")
