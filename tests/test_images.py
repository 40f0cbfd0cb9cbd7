import os
import shutil

import cv2
import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from conftest import shared
from cxrkit.data.images import read_dicom, read_dicom_info, read_image
from cxrkit.errors import FailureReason, ImageReadError
from dicom_helpers import compress_copy, make_dicom

RAMP = np.tile(np.arange(0, 4096, 16, dtype=np.uint16), (32, 1))  # 32 x 256, 12-bit ramp


def tfile(name):
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    return path


# --- PNG / JPEG ------------------------------------------------------------------------


def test_png_8bit_grey_and_rgb_agree(tmp_path):
    g = (np.arange(64 * 64) % 256).reshape(64, 64).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), g)
    cv2.imwrite(str(tmp_path / "rgb.png"), np.dstack([g, g, g]))
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([g, g, g, np.full_like(g, 255)]))
    a = read_image(tmp_path / "g.png")
    assert a.dtype == np.float32 and a.shape == (64, 64)
    np.testing.assert_allclose(a, g / 255.0, atol=1e-7)
    np.testing.assert_allclose(read_image(tmp_path / "rgb.png"), a, atol=1 / 255)
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png"), a, atol=1 / 255)


def test_png_16bit_uses_bit_depth(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), RAMP)  # 12-bit data in a 16-bit PNG
    a = read_image(tmp_path / "a.png")
    np.testing.assert_allclose(a, RAMP / 4095.0, atol=1e-6)
    full = (RAMP.astype(np.uint32) * 16).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "b.png"), full)
    np.testing.assert_allclose(read_image(tmp_path / "b.png"), full / 65535.0, atol=1e-6)
    mm = read_image(tmp_path / "a.png", intensity="minmax")
    assert mm.min() == 0.0 and mm.max() == 1.0


def test_jpeg_and_real_nih_png(tmp_path):
    g = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8), (5, 5), 2)
    cv2.imwrite(str(tmp_path / "a.jpg"), g, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert np.abs(read_image(tmp_path / "a.jpg") - g / 255.0).max() < 0.05
    nih = shared("nih1000", "images", "00000001_000.png")
    img = read_image(nih)
    assert img.shape == (64, 64) and 0 <= img.min() < img.max() <= 1


def test_raster_errors(tmp_path):
    with pytest.raises(ImageReadError) as e:
        read_image(tmp_path / "missing.png")
    assert e.value.reason is FailureReason.MISSING and "missing.png" in str(e.value)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError) as e:
        read_image(tmp_path / "empty.png")
    assert e.value.reason is FailureReason.EMPTY
    g = np.zeros((64, 64), np.uint8)
    g[10:20] = 200
    ok, buf = cv2.imencode(".png", g)
    (tmp_path / "trunc.png").write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(ImageReadError) as e:
        read_image(tmp_path / "trunc.png")
    assert e.value.reason in (FailureReason.TRUNCATED, FailureReason.UNREADABLE)
    (tmp_path / "text.jpg").write_text("hello")
    with pytest.raises(ImageReadError, match="not a readable"):
        read_image(tmp_path / "text.jpg")
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


# --- DICOM pixel pipeline ----------------------------------------------------------------


def test_real_chest_dicoms():
    for name in ("siim_cr_chest_pa_jpeg_baseline.dcm", "nih_dx_chest_uncompressed.dcm"):
        img, info = read_dicom(shared("dicom", name))
        assert img.shape == (1024, 1024) and img.dtype == np.float32
        assert img.min() == 0.0 and img.max() == 1.0
        assert info.modality in ("CR", "DX") and info.sop_instance_uid
        # lungs (upper middle of each side) darker than the mediastinum / spine in MONOCHROME2
        lungs = (img[300:500, 200:350].mean() + img[300:500, 674:824].mean()) / 2
        assert lungs < img[300:500, 480:544].mean()
    info = read_dicom_info(shared("dicom", "siim_cr_chest_pa_jpeg_baseline.dcm"))
    assert info.transfer_syntax.startswith("JPEG Baseline") and info.view_position == "PA"


def test_window_rescale_then_monochrome1_inversion(tmp_path):
    stored = RAMP
    # modality LUT: value = 2 * stored - 1000 ; window centre 1000 width 2000 -> [0, 2000] maps to [0, 1]
    p2 = make_dicom(tmp_path / "m2.dcm", stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000,
                    WindowCenter=1000, WindowWidth=2000)
    img2, _ = read_dicom(p2)
    hu = 2.0 * stored - 1000
    expected = np.clip((hu - (1000 - 0.5)) / (2000 - 1) + 0.5, 0, 1)  # DICOM LINEAR window
    np.testing.assert_allclose(img2, expected, atol=1e-5)
    p1 = make_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1", bits_stored=12, RescaleSlope=2,
                    RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=2000)
    img1, _ = read_dicom(p1)
    np.testing.assert_allclose(img1, 1.0 - expected, atol=1e-5)  # inversion after VOI


@pytest.mark.usefixtures("no_image_limits")
def test_voi_lut_sequence_preferred_over_window(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    stored = (np.arange(256, dtype=np.uint16).reshape(16, 16))
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", [min(255, 2 * i) for i in range(256)])  # LUT Data: doubles, saturates
    p = make_dicom(tmp_path / "voi.dcm", stored.astype(np.uint8), VOILUTSequence=Sequence([item]),
                   WindowCenter=10, WindowWidth=5)
    img, _ = read_dicom(p)
    expected = np.minimum(255, 2 * stored) / 255.0
    np.testing.assert_allclose(img, expected, atol=1e-6)


def test_no_voi_is_minmax(tmp_path):
    p = make_dicom(tmp_path / "plain.dcm", RAMP + 100, bits_stored=16)
    img, _ = read_dicom(p)
    np.testing.assert_allclose(img, (RAMP - RAMP.min()) / (RAMP.max() - RAMP.min()), atol=1e-6)


@pytest.mark.usefixtures("no_image_limits")
def test_compressed_transfer_syntaxes_decode_like_uncompressed():
    ref = read_image(tfile("MR_small.dcm"))
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                 "MR_small_bigendian.dcm", "MR_small_implicit.dcm"):
        np.testing.assert_allclose(read_image(tfile(name)), ref, atol=1e-6, err_msg=name)
    for name in ("JPEG2000.dcm", "JPGExtended.dcm", "JPEGLSNearLossless_16.dcm", "693_J2KI.dcm"):
        img = read_image(tfile(name))
        assert img.ndim == 2 and img.max() == 1.0 and img.min() == 0.0, name


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_encode_decode_chest_like_dicom(tmp_path, syntax):
    src = make_dicom(tmp_path / "src.dcm", RAMP, bits_stored=12, WindowCenter=2048, WindowWidth=4096)
    try:
        dst = compress_copy(src, tmp_path / "c.dcm", syntax)
    except Exception as e:  # encoder plugin not installed
        pytest.skip(f"no encoder for {syntax.name}: {e}")
    np.testing.assert_allclose(read_image(dst), read_image(src), atol=1e-6)


@pytest.mark.parametrize("name,reason", [
    ("SC_rgb_jpeg_dcmtk.dcm", FailureReason.COLOUR),
    ("examples_palette.dcm", FailureReason.COLOUR),
    ("examples_ybr_color.dcm", FailureReason.COLOUR),
    ("rtdose.dcm", FailureReason.MULTI_FRAME),
    ("rtplan.dcm", FailureReason.NON_IMAGE),
    ("test-SR.dcm", FailureReason.NON_IMAGE),
    ("MR_truncated.dcm", FailureReason.TRUNCATED),
    ("no_meta.dcm", FailureReason.NOT_DICOM),
])
def test_dicom_typed_errors(name, reason):
    path = tfile(name)
    with pytest.raises(ImageReadError) as e:
        read_image(path)
    assert e.value.reason is reason
    assert os.path.basename(path) in str(e.value)


def test_truncated_and_garbage_dicom(tmp_path):
    src = shared("dicom", "nih_dx_chest_uncompressed.dcm")
    data = src.read_bytes()
    (tmp_path / "half.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError) as e:
        read_image(tmp_path / "half.dcm")
    assert e.value.reason is FailureReason.TRUNCATED
    (tmp_path / "junk.dcm").write_bytes(os.urandom(2000))
    with pytest.raises(ImageReadError) as e:
        read_image(tmp_path / "junk.dcm")
    assert e.value.reason in (FailureReason.NOT_DICOM, FailureReason.UNREADABLE)
    shutil.copy(src, tmp_path / "no_suffix")
    img, _ = read_dicom(tmp_path / "no_suffix")  # detected by the DICM preamble
    assert read_image(tmp_path / "no_suffix").shape == img.shape == (1024, 1024)


def test_patient_identity_not_in_info(tmp_path):
    p = make_dicom(tmp_path / "id.dcm", RAMP, bits_stored=12)
    info = read_dicom_info(p)
    text = str(info.to_dict())
    assert "SECRET" not in text and info.modality == "CR" and info.body_part == "CHEST"
