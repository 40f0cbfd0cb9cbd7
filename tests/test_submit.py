"""The leaderboard entry modes, run in-process on the checked-in test inputs (the container
run of the same is challenge/do_test_run.sh)."""

import csv
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cxrkit.errors import CxrkitError
from cxrkit.submit import main

REPO = Path(__file__).resolve().parents[1]
T = REPO / "challenge" / "test"
MODEL = str(T / "model")


def _csv(p):
    with open(p, newline="") as f:
        return list(csv.reader(f))


def _same_csv(a, b):
    ra, rb = _csv(a), _csv(b)
    assert ra[0] == rb[0] and [r[0] for r in ra] == [r[0] for r in rb]
    np.testing.assert_allclose(np.array([r[1:] for r in ra[1:]], float), np.array([r[1:] for r in rb[1:]], float),
                               atol=1e-4)


def test_chexpert_codalab_form(tmp_path, monkeypatch):
    monkeypatch.chdir(T / "chexpert")
    assert main(["--model", MODEL, "input.csv", str(tmp_path / "out.csv")]) == 0  # <program> input output
    _same_csv(tmp_path / "out.csv", T / "chexpert" / "expected.csv")
    rows = _csv(tmp_path / "out.csv")
    assert rows[0] == ["Study", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
    studies = {str(Path(r[0]).parent.parent) for r in _csv(T / "chexpert" / "input.csv")[1:]}
    assert len(rows) - 1 == len({r[0].rsplit("/", 1)[0] for r in _csv(T / "chexpert" / "input.csv")[1:]})
    assert studies


def test_cxr_lt(tmp_path, monkeypatch):
    monkeypatch.chdir(T / "cxrlt")
    assert main(["--model", MODEL, "cxr-lt", "input.csv", str(tmp_path)]) == 0
    _same_csv(tmp_path / "submission.csv", T / "cxrlt" / "expected" / "submission.csv")
    assert len(_csv(tmp_path / "submission.csv")[0]) == 27
    with zipfile.ZipFile(tmp_path / "submission.zip") as z:  # the winning entries' layout: CSV + code/
        names = z.namelist()
        assert names[0] == "submission.csv" and "code/MODEL_CARD.md" in names and "code/model-00.json" in names
        assert "cxrkit" in z.read("code/MODEL_CARD.md").decode()
    assert main(["--model", MODEL, "cxr-lt", "input.csv", str(tmp_path / "only"), "--csv-only"]) == 0
    with zipfile.ZipFile(tmp_path / "only" / "submission.zip") as z:
        assert z.namelist() == ["submission.csv"]


def test_grand_challenge(tmp_path):
    assert main(["--model", MODEL, "gc", "--input", str(T / "gc" / "input"), "--output", str(tmp_path)]) == 0
    got = json.loads((tmp_path / "results.json").read_text())
    exp = json.loads((T / "gc" / "expected" / "results.json").read_text())
    assert [c["input"] for c in got["cases"]] == [c["input"] for c in exp["cases"]] == ["images/chest-x-ray/case.mha"]
    for a, b in zip(got["cases"], exp["cases"]):
        assert a["probabilities"].keys() == b["probabilities"].keys()
        np.testing.assert_allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-4)
    assert len(json.loads((tmp_path / "probabilities.json").read_text())) == 26


def test_errors_exit_nonzero_with_a_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["--model", MODEL, "chexpert", "missing.csv", "out.csv"]) == 2
    assert "missing.csv" in capsys.readouterr().err
    (tmp_path / "in.csv").write_text("Image\nx.png\n")
    assert main(["--model", MODEL, "chexpert", "in.csv", "out.csv"]) == 2
    assert "Path column" in capsys.readouterr().err
    (tmp_path / "in.csv").write_text("Path\nnope/study1/view1.png\n")
    assert main(["--model", MODEL, "chexpert", "in.csv", "out.csv"]) == 2
    assert "could not be used" in capsys.readouterr().err and not (tmp_path / "out.csv").exists()
    assert main(["--model", str(tmp_path / "nomodel"), "gc", "--input", str(tmp_path)]) == 2
    assert "model not found" in capsys.readouterr().err


def test_console_script_in_a_subprocess(tmp_path):
    shutil.copytree(T / "chexpert", tmp_path / "in")
    r = subprocess.run([sys.executable, "-m", "cxrkit.submit", "--model", MODEL, "input.csv", str(tmp_path / "o.csv")],
                       cwd=tmp_path / "in", capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    _same_csv(tmp_path / "o.csv", T / "chexpert" / "expected.csv")


# ---------------------------------------------------------------------------------------
# issue 11: the platforms' own conventions
# ---------------------------------------------------------------------------------------

CXR_LT_2024_TASK1 = [  # the 40 classes of CXR-LT 2024 task 1, as its sample submission spells them
    "Adenopathy", "Atelectasis", "Azygos Lobe", "Calcification of the Aorta", "Cardiomegaly", "Clavicle Fracture",
    "Consolidation", "Edema", "Emphysema", "Enlarged Cardiomediastinum", "Fibrosis", "Fissure", "Fracture",
    "Granuloma", "Hernia", "Hydropneumothorax", "Infarction", "Infiltration", "Kyphosis", "Lobar Atelectasis",
    "Lung Lesion", "Lung Opacity", "Mass", "Nodule", "Normal", "Pleural Effusion", "Pleural Other",
    "Pleural Thickening", "Pneumomediastinum", "Pneumonia", "Pneumoperitoneum", "Pneumothorax",
    "Pulmonary Embolism", "Pulmonary Hypertension", "Rib Fracture", "Round(ed) Atelectasis",
    "Subcutaneous Emphysema", "Support Devices", "Tortuous Aorta", "Tuberculosis"]


def test_class_names_map_across_leaderboards():
    from cxrkit.submit import class_key, map_classes

    assert class_key("No Finding") == class_key("Normal") == class_key("no_finding")
    assert class_key("Pleural_Effusion") == class_key("Pleural Effusion") == class_key("pleural-effusion")
    model = ["No Finding", "Pleural Effusion", "Cardiomegaly"]
    assert map_classes(["normal", "Pleural_Effusion", "CARDIOMEGALY"], model, "x") == [0, 1, 2]
    with pytest.raises(CxrkitError) as e:
        map_classes(CXR_LT_2024_TASK1, model, "task 1")
    msg = str(e.value)
    assert "37 class(es)" in msg and "Tuberculosis" in msg and "Adenopathy" in msg and "Normal" not in msg.split(":")[1]


def _sample(path, id_name, classes, ids):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([id_name, *classes])
        for i in ids:
            w.writerow([i, *(["0"] * len(classes))])
    return path


def test_cxr_lt_2024_task1_needs_every_class_and_names_the_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(T / "cxrlt")
    ids = [r[0] for r in _csv("input.csv")[1:]]
    _sample(tmp_path / "task1.csv", "dicom_id", CXR_LT_2024_TASK1, ids)
    assert main(["--model", MODEL, "cxr-lt", "input.csv", str(tmp_path / "o"), "--sample-submission",
                 str(tmp_path / "task1.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "14 class(es)" in err and "Tuberculosis" in err and "Adenopathy" in err


def test_cxr_lt_2024_task2_order_names_and_ids_from_the_sample_submission(tmp_path, monkeypatch):
    from cxrkit.labels import CXR_LT_26

    monkeypatch.chdir(T / "cxrlt")
    task2 = [("Normal" if c == "No Finding" else c) for c in CXR_LT_26][::-1]  # Normal, another order
    ids = [r[0] for r in _csv("input.csv")[1:]]
    order = ids[::-1]
    _sample(tmp_path / "task2.csv", "dicom_id", task2, order)
    assert main(["--model", MODEL, "cxr-lt", "input.csv", str(tmp_path / "o"), "--sample-submission",
                 str(tmp_path / "task2.csv")]) == 0
    got = _csv(tmp_path / "o" / "submission.csv")
    assert got[0] == ["dicom_id", *task2] and [r[0] for r in got[1:]] == order
    ref = {r[0]: dict(zip(_csv(T / "cxrlt" / "expected" / "submission.csv")[0][1:], r[1:]))
           for r in _csv(T / "cxrlt" / "expected" / "submission.csv")[1:]}
    for r in got[1:]:
        row = dict(zip(task2, r[1:]))
        assert abs(float(row["Normal"]) - float(ref[r[0]]["No Finding"])) < 1e-4
        assert abs(float(row["Pneumonia"]) - float(ref[r[0]]["Pneumonia"])) < 1e-4


def test_cxr_lt_missing_images_are_filled_reported_and_strict_fails(tmp_path, capsys):
    shutil.copytree(T / "cxrlt", tmp_path / "in")
    rows = _csv(tmp_path / "in" / "input.csv")
    (tmp_path / "in" / rows[2][1]).unlink()  # one image gone
    (tmp_path / "in" / rows[3][1]).write_bytes(b"not a png")  # one unreadable
    model = tmp_path / "model"
    shutil.copytree(T / "model", model)
    meta = json.loads((model / "model.json").read_text())
    meta["extra"] = {"train_prevalence": {c: 0.01 * (k + 1) for k, c in enumerate(meta["classes"])}}
    (model / "model.json").write_text(json.dumps(meta))
    out = tmp_path / "o"
    inp = str(tmp_path / "in" / "input.csv")
    assert main(["--model", str(model), "cxr-lt", inp, str(out)]) == 0
    err = capsys.readouterr().err
    assert "2 of" in err and rows[2][1] in err and rows[3][1] in err
    got = {r[0]: r[1:] for r in _csv(out / "submission.csv")[1:]}
    assert len(got) == len(rows) - 1
    for k in (2, 3):
        np.testing.assert_allclose([float(v) for v in got[rows[k][0]]], [0.01 * (j + 1) for j in range(26)], atol=1e-6)
    assert float(got[rows[1][0]][0]) != 0.01  # a readable image keeps its prediction
    assert len(_csv(out / "missing.csv")) == 3
    assert main(["--model", str(model), "cxr-lt", inp, str(tmp_path / "o2"), "--strict"]) == 2


def test_chexpert_study_key_is_the_path_up_to_the_last_slash():
    from cxrkit.submit import _study

    real = _csv(REPO / ".." / "shared" / "data" / "chexpert" / "valid.csv") if (
        REPO / ".." / "shared" / "data" / "chexpert" / "valid.csv").is_file() else [["Path"],
        ["CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg"]]
    for row in real[1:]:
        path = row[0]
        want = path.rsplit("/", 1)[0]
        assert _study(path) == want
        for prefix in ("study_data/", "/data/chexpert/", "./"):
            assert _study(prefix + path) == prefix + want
    assert _study("CheXpert-v1.0/valid/patient1/study2/extra/view1.jpg") == "CheXpert-v1.0/valid/patient1/study2/extra"


INTERFACE = {"algorithm": {"title": "CXR", "inputs": [
    {"slug": "chest-x-ray", "kind": "Image", "super_kind": "Image", "relative_path": "images/chest-x-ray"},
    {"slug": "patient-age", "kind": "Integer", "super_kind": "Value", "relative_path": "patient-age.json"}],
    "outputs": [
    {"slug": "chest-x-ray-findings", "kind": "Anything", "super_kind": "File", "relative_path": "findings.json"},
    {"slug": "cardiomegaly-likelihood", "kind": "Float", "super_kind": "Value",
     "relative_path": "cardiomegaly-likelihood.json"},
    {"slug": "pneumonia", "kind": "Bool", "super_kind": "Value", "relative_path": "pneumonia.json"},
    {"slug": "effusion-probability", "kind": "Float", "super_kind": "Value", "relative_path": "effusion.json",
     "cxrkit": {"write": "probability", "finding": "Pleural Effusion"}}]}}


def _gc_input(root):
    (root / "images" / "chest-x-ray").mkdir(parents=True)
    real = root.parent / "store" / "case.mha"
    real.parent.mkdir()
    shutil.copy(T / "gc" / "input" / "images" / "chest-x-ray" / "case.mha", real)
    (root / "images" / "chest-x-ray" / "case.mha").symlink_to(real)  # as the platform's shim does
    (root / "patient-age.json").write_text("63")
    (root / "notes.txt").write_text("a file that is not an image")
    (root / "inputs.json").write_text(json.dumps([
        {"interface": INTERFACE["algorithm"]["inputs"][0], "image": {"name": "case.mha"}},
        {"interface": INTERFACE["algorithm"]["inputs"][1], "value": 63}]))
    return root


def test_grand_challenge_output_sockets_from_the_interface(tmp_path):
    root = _gc_input(tmp_path / "input")
    (tmp_path / "interface.json").write_text(json.dumps(INTERFACE))
    out = tmp_path / "out"
    assert main(["--model", MODEL, "gc", "--input", str(root), "--output", str(out), "--interface",
                 str(tmp_path / "interface.json")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["cardiomegaly-likelihood.json", "effusion.json",
                                                     "findings.json", "pneumonia.json"]
    exp = json.loads((T / "gc" / "expected" / "probabilities.json").read_text())
    findings = json.loads((out / "findings.json").read_text())
    assert findings.keys() == exp.keys()
    assert abs(json.loads((out / "cardiomegaly-likelihood.json").read_text()) - exp["Cardiomegaly"]) < 1e-4
    assert abs(json.loads((out / "effusion.json").read_text()) - exp["Pleural Effusion"]) < 1e-4
    thr = json.loads((T / "model" / "model.json").read_text())
    t = thr["thresholds"][thr["classes"].index("Pneumonia")]
    assert json.loads((out / "pneumonia.json").read_text()) is (exp["Pneumonia"] >= t)


def test_grand_challenge_interface_errors(tmp_path, capsys):
    root = _gc_input(tmp_path / "input")
    bad = dict(INTERFACE["algorithm"], outputs=[{"slug": "results", "kind": "Anything", "relative_path": "results.json"}])
    (tmp_path / "i.json").write_text(json.dumps({"algorithm": bad}))
    assert main(["--model", MODEL, "gc", "--input", str(root), "--output", str(tmp_path / "o"),
                 "--interface", str(tmp_path / "i.json")]) == 2
    assert "reserved" in capsys.readouterr().err
    (tmp_path / "i.json").write_text(json.dumps({"outputs": [{"slug": "hernia-x", "kind": "Float",
                                                              "relative_path": "h.json"}]}))
    assert main(["--model", MODEL, "gc", "--input", str(root), "--output", str(tmp_path / "o"),
                 "--interface", str(tmp_path / "i.json")]) == 2
    assert "no finding" in capsys.readouterr().err


def test_grand_challenge_value_inputs_are_not_images(tmp_path):
    from cxrkit.submit import _gc_inputs

    root = _gc_input(tmp_path / "input")
    assert [p.name for p in _gc_inputs(root)] == ["case.mha"]
    # a DICOM image set: <sop_uid>.dcm files in the socket's folder
    from dicom_helpers import make_dicom

    d = tmp_path / "dcm"
    (d / "images" / "cxr").mkdir(parents=True)
    img = (np.random.default_rng(0).random((64, 64)) * 4000).astype(np.uint16)
    for uid in ("1.2.3.4", "1.2.3.5"):
        make_dicom(d / "images" / "cxr" / f"{uid}.dcm", img)
    (d / "age.json").write_text("50")
    (d / "inputs.json").write_text(json.dumps([
        {"interface": {"slug": "cxr", "kind": "DICOM Image Set", "super_kind": "Image", "relative_path": "images/cxr"}},
        {"interface": {"slug": "age", "kind": "Integer", "super_kind": "Value", "relative_path": "age.json"}}]))
    assert [p.name for p in _gc_inputs(d)] == ["1.2.3.4.dcm", "1.2.3.5.dcm"]


#: a phase in grand-challenge-forge's current format: two interfaces, chosen per job by its sockets
PHASE = {"algorithm": {"title": "CXR", "slug": "cxr", "url": "https://grand-challenge.org/algorithms/cxr/",
                       "algorithm_interfaces": [
    {"inputs": [{"slug": "chest-x-ray", "kind": "Image", "super_kind": "Image", "relative_path": "images/chest-x-ray"}],
     "outputs": [{"slug": "chest-x-ray-findings", "kind": "Anything", "super_kind": "File",
                  "relative_path": "findings.json"}]},
    {"inputs": [{"slug": "chest-x-ray", "kind": "Image", "super_kind": "Image", "relative_path": "images/chest-x-ray"},
                {"slug": "patient-age", "kind": "Integer", "super_kind": "Value", "relative_path": "patient-age.json"}],
     "outputs": [{"slug": "chest-x-ray-findings", "kind": "Anything", "super_kind": "File",
                  "relative_path": "findings.json"},
                 {"slug": "cardiomegaly-likelihood", "kind": "Float", "super_kind": "Value",
                  "relative_path": "cardiomegaly-likelihood.json"}]}]}}


def _job(root, with_age):
    root.mkdir()
    root = _gc_input(root / "input")
    if not with_age:
        (root / "patient-age.json").unlink()
        (root / "inputs.json").write_text(json.dumps([
            {"interface": INTERFACE["algorithm"]["inputs"][0], "image": {"name": "case.mha"}}]))
    return root


def test_grand_challenge_current_format_picks_the_jobs_interface(tmp_path, capsys):
    """A phase written as grand-challenge-forge writes it today (algorithm_interfaces) offers
    two interfaces; each job writes exactly the outputs of the interface its sockets match
    (before: "lists no output sockets", every job failed)."""
    from cxrkit.submit import choose_interface, load_interfaces

    (tmp_path / "phase.json").write_text(json.dumps(PHASE))
    assert [len(i["outputs"]) for i in load_interfaces(tmp_path / "phase.json")] == [1, 2]
    for with_age, want in ((False, ["findings.json"]), (True, ["cardiomegaly-likelihood.json", "findings.json"])):
        root = _job(tmp_path / f"in{int(with_age)}", with_age)
        out = tmp_path / f"out{int(with_age)}"
        assert main(["--model", MODEL, "gc", "--input", str(root), "--output", str(out), "--interface",
                     str(tmp_path / "phase.json")]) == 0
        assert sorted(p.name for p in out.iterdir()) == want
    # a job whose sockets match no interface fails, in one line naming them
    root = _job(tmp_path / "in-ct", False)
    (root / "inputs.json").write_text(json.dumps([{"interface": {"slug": "ct-image", "kind": "Image",
                                                                "super_kind": "Image", "relative_path": "images/ct"}}]))
    capsys.readouterr()
    assert main(["--model", MODEL, "gc", "--input", str(root), "--output", str(tmp_path / "o3"), "--interface",
                 str(tmp_path / "phase.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert "ct-image" in err and "match none" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o3").exists() or not list((tmp_path / "o3").iterdir())
    # the pack context's phase format, and a whole pack with the phase named
    pack = {"challenge": {"slug": "c", "url": "u", "archives": [], "phases": [
        {"slug": "p1", "archive": {"slug": "a", "url": "u"}, "algorithm_interfaces":
         PHASE["algorithm"]["algorithm_interfaces"], "evaluation_additional_inputs": [],
         "evaluation_additional_outputs": []}]}}
    (tmp_path / "pack.json").write_text(json.dumps(pack))
    assert len(load_interfaces(tmp_path / "pack.json")) == 2
    (tmp_path / "phase-part.json").write_text(json.dumps(pack["challenge"]["phases"][0]))
    ifaces = load_interfaces(tmp_path / "phase-part.json")
    assert choose_interface(ifaces, ["chest-x-ray", "patient-age"])["outputs"][1]["slug"] == "cardiomegaly-likelihood"


def test_the_platforms_own_schema_accepts_the_test_phase():
    """The phase used above is valid under grand-challenge-forge's own context schema (its
    INTERFACE_SCHEMA / ALGORITHM_TEMPLATE_CONTEXT_SCHEMA, copied from the 2025 source)."""
    import jsonschema

    socket = {"type": "object", "properties": {"slug": {"type": "string"}, "relative_path": {"type": "string"},
                                               "kind": {"type": "string"}, "super_kind": {"type": "string"}},
              "required": ["slug", "relative_path", "kind", "super_kind"]}
    interface = {"type": "object", "properties": {"inputs": {"type": "array", "items": socket},
                                                  "outputs": {"type": "array", "items": socket}},
                 "required": ["inputs", "outputs"]}
    schema = {"type": "object", "properties": {"algorithm": {"type": "object", "properties": {
        "title": {"type": "string"}, "slug": {"type": "string"}, "url": {"type": "string"},
        "algorithm_interfaces": {"type": "array", "items": interface}},
        "required": ["title", "url", "slug", "algorithm_interfaces"]}}, "required": ["algorithm"]}
    jsonschema.validate(PHASE, schema)


def _build_copy(tmp_path):
    """challenge/'s scripts in a scratch checkout (the repo's venv linked in), so that staging
    writes there and not into this checkout's challenge/build."""
    root = tmp_path / "checkout"
    (root / "challenge").mkdir(parents=True)
    for f in (REPO / "challenge").glob("*.sh"):
        shutil.copy(f, root / "challenge" / f.name)
    (root / ".venv").symlink_to(Path(sys.prefix))  # the venv running the tests
    return root


def test_do_build_stages_the_model_and_the_phase(trained_model, tmp_path):
    """The build's steps as the leaderboard guide gives them: the phase file is checked, the
    model exported to ONNX and staged (the container build itself is challenge/do_test_run.sh's)."""
    root = _build_copy(tmp_path)
    (tmp_path / "phase.json").write_text(json.dumps(PHASE))
    env = dict(os.environ, CXRKIT_STAGE_ONLY="1", CXRKIT_CONTAINER_SH=str(tmp_path / "none.sh"))
    (tmp_path / "none.sh").write_text("exit 0\n")
    r = subprocess.run(["bash", str(root / "challenge" / "do_build.sh"), str(trained_model), str(tmp_path / "phase.json")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "2 algorithm interface(s)" in r.stdout
    staged = root / "challenge" / "build"
    assert (staged / "model" / "model.onnx").is_file() and (staged / "interface" / "interface.json").is_file()
    assert not list((staged / "model").rglob("model.safetensors"))
    assert (staged / "engine").read_text().strip() == "onnx"  # the Dockerfile installs the runtime lock
    r = subprocess.run(["bash", str(root / "challenge" / "do_build.sh"), str(trained_model)], capture_output=True,
                       text=True, env=dict(env, CXRKIT_OPENVINO="1"), timeout=300)
    assert r.returncode == 0, r.stderr
    assert (staged / "engine").read_text().strip() == "openvino"


def _pins(lock: Path) -> dict[str, str]:
    import re

    return dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+) \\$", lock.read_text(), flags=re.M))


def test_the_openvino_image_keeps_the_runtime_versions():
    """requirements-openvino.lock = requirements-runtime.lock's packages at the same versions
    (with hashes) + OpenVINO and what it needs; the Dockerfile installs one or the other."""
    runtime, ov = _pins(REPO / "challenge" / "requirements-runtime.lock"), _pins(REPO / "challenge" /
                                                                               "requirements-openvino.lock")
    assert "onnxruntime" in runtime and "openvino" in ov and "openvino" not in runtime
    assert {k: ov.get(k) for k in runtime} == runtime
    assert set(ov) - set(runtime) <= {"openvino", "openvino-telemetry"}
    text = (REPO / "challenge" / "requirements-openvino.lock").read_text()
    assert text.count("--hash=sha256:") >= len(ov) and "file:///" not in text
    docker = (REPO / "Dockerfile").read_text()
    assert "requirements-openvino.lock" in docker and "challenge/build/engine" in docker


def test_every_file_the_dockerfile_copies_passes_the_dockerignore():
    """.dockerignore excludes everything but what it names: a COPY source it does not name
    fails the image build ("no items matching"), which no CPU test would otherwise see."""
    import shlex

    allowed = [ln[1:].strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.startswith("!")]
    copies = []
    for ln in (REPO / "Dockerfile").read_text().splitlines():
        if ln.startswith("COPY "):
            parts = [p for p in shlex.split(ln)[1:] if not p.startswith("--")]
            copies += parts[:-1]
    assert "challenge/build/engine" in copies and len(copies) >= 6
    for src in copies:
        assert any(src == a or src.startswith(a.rstrip("/") + "/") for a in allowed), src


def test_the_submission_engine_follows_the_image_and_the_cpu(monkeypatch):
    import importlib.util

    from cxrkit.inference import runtime
    from cxrkit.leaderboard.submit import submission_engine

    real = importlib.util.find_spec
    monkeypatch.delenv("CXRKIT_ENGINE", raising=False)
    monkeypatch.setattr(runtime, "cpu_vendor", lambda: "GenuineIntel")
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "openvino" else real(n, *a))
    assert submission_engine() == "openvino"  # an OpenVINO image on an Intel CPU
    monkeypatch.setattr(runtime, "cpu_vendor", lambda: "AuthenticAMD")
    assert submission_engine() == "onnx"  # measured faster on AMD
    monkeypatch.setenv("CXRKIT_ENGINE", "openvino")
    assert submission_engine() == "openvino"
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "openvino" else real(n, *a))
    with pytest.raises(CxrkitError, match="no OpenVINO"):
        submission_engine()  # the plain image
    monkeypatch.delenv("CXRKIT_ENGINE")
    monkeypatch.setattr(runtime, "cpu_vendor", lambda: "GenuineIntel")
    assert submission_engine() == "onnx"


def test_do_build_without_onnx_says_what_to_install(trained_model, tmp_path):
    """After the plain install (pip install -e ., no onnx) the build stopped with a traceback;
    now one line naming the packages and the extra, exit 2."""
    root = _build_copy(tmp_path)
    fake = tmp_path / "no-onnx"
    (fake / "onnx").mkdir(parents=True)
    (fake / "onnx" / "__init__.py").write_text("raise ImportError('onnx is not installed')\n")
    env = dict(os.environ, CXRKIT_STAGE_ONLY="1", PYTHONPATH=str(fake), CXRKIT_CONTAINER_SH=str(tmp_path / "none.sh"))
    (tmp_path / "none.sh").write_text("exit 0\n")
    model = tmp_path / "model"
    shutil.copytree(trained_model, model, ignore=shutil.ignore_patterns("*.onnx", "*.onnx.json"))
    r = subprocess.run(["bash", str(root / "challenge" / "do_build.sh"), str(model)], capture_output=True, text=True,
                       env=env, timeout=300)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip().startswith("error: ONNX export needs") and '.[onnx]' in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_chexpert_paths_as_codalab_lays_them_out(tmp_path, monkeypatch, capsys):
    """The real valid.csv paths (CheXpert-v1.0/valid/patient/study/view) found whether the
    image bundle is mounted as CheXpert-v1.0/ or as valid/ (cl run ... valid:valid), next to
    the working folder or the CSV; the rule used is reported on stdout (stderr stays empty);
    a layout that matches nothing says what layout the paths need."""
    src = sorted((T / "chexpert").rglob("*.png")) + sorted((T / "chexpert").rglob("*.jpg"))
    assert src
    rows = []
    for layout in ("CheXpert-v1.0/valid", "valid"):
        work = tmp_path / layout.replace("/", "_")
        for i, f in enumerate(src[:3]):
            d = work / layout / f"patient0000{i}" / "study1"
            d.mkdir(parents=True)
            shutil.copy(f, d / "view1_frontal.png")
            if layout == "valid":
                rows.append(f"CheXpert-v1.0/valid/patient0000{i}/study1/view1_frontal.png")
        (work / "valid_image.csv").write_text("Path\n" + "\n".join(
            f"CheXpert-v1.0/valid/patient0000{i}/study1/view1_frontal.png" for i in range(3)) + "\n")
        monkeypatch.chdir(work)
        capsys.readouterr()
        assert main(["--model", MODEL, "chexpert", "valid_image.csv", "predictions.csv"]) == 0
        out = capsys.readouterr()
        assert out.err == "" and "resolved against the working folder" in out.out
        assert ("without their first 1 folder(s) (CheXpert-v1.0/)" in out.out) == (layout == "valid")
        got = list(csv.reader(open(work / "predictions.csv")))
        assert [r[0] for r in got[1:]] == [f"CheXpert-v1.0/valid/patient0000{i}/study1" for i in range(3)]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.csv").write_text("Path\nCheXpert-v1.0/valid/patient1/study1/view1_frontal.jpg\n")
    assert main(["--model", MODEL, "chexpert", "bad.csv", "o.csv"]) == 2
    err = capsys.readouterr().err
    assert "could not be used" in err and "lay the images out so that CheXpert-v1.0/valid/patient1" in err
