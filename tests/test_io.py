"""Image and mask readers: every format, bit depth and colour model, and every bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from buscad.data import io as bio
from buscad.data.io import image_size, read_image, read_labelme, read_mask, split_mask_paths
from buscad.errors import ImageReadError, InputFileError, MaskError
from synth_files import (
    bomb_png,
    gradient,
    labelme,
    truncated_png,
    write_dicom,
    write_mask,
    write_png,
)


def assert_one_line(err: pytest.ExceptionInfo, path: Path) -> None:
    """The error is one line and names the offending file."""
    text = str(err.value)
    assert "\n" not in text
    assert str(path) in text
    assert isinstance(err.value, InputFileError)
    assert err.value.path == str(path)


# ----------------------------------------------------------------------------- raster images


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif"])
def test_lossless_8bit_gray_roundtrip(tmp_path, suffix):
    arr = gradient()
    f = write_png(tmp_path / f"g{suffix}", arr)
    gray, meta = read_image(f)
    assert gray.dtype == np.uint8 and meta.bit_depth == 8
    np.testing.assert_array_equal(gray, arr)
    assert (meta.height, meta.width) == arr.shape
    assert not meta.has_colour and meta.colour_fraction == 0.0
    assert meta.format == {".png": "png", ".bmp": "bmp", ".tif": "tiff"}[suffix]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_gray_keeps_16_bits(tmp_path, suffix):
    arr = gradient(dtype=np.uint16) * 16  # values up to ~64000
    f = write_png(tmp_path / f"g16{suffix}", arr)
    gray, meta = read_image(f)
    assert gray.dtype == np.uint16 and meta.bit_depth == 16
    np.testing.assert_array_equal(gray, arr)


def test_jpeg_gray_and_colour(tmp_path):
    arr = np.full((32, 40), 120, np.uint8)
    f = write_png(tmp_path / "g.jpg", arr)
    gray, meta = read_image(f)
    assert meta.format == "jpeg" and gray.shape == (32, 40)
    assert np.abs(gray.astype(int) - 120).max() <= 2
    assert not meta.has_colour
    rgb = np.stack([arr] * 3, axis=-1)
    rgb[8:24, 10:30] = (230, 30, 30)  # a red (Doppler-like) box
    f2 = write_png(tmp_path / "c.jpg", rgb)
    _, meta2 = read_image(f2)
    assert meta2.has_colour
    # 4:2:0 chroma subsampling bleeds colour a few pixels past the box edge
    assert 16 * 20 / (32 * 40) <= meta2.colour_fraction <= 24 * 28 / (32 * 40)


def test_rgb_png_luma_and_colour_fraction(tmp_path):
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., :] = 100  # gray background: not coloured
    rgb[:5, :6] = (200, 50, 0)
    f = write_png(tmp_path / "rgb.png", rgb)
    gray, meta = read_image(f)
    assert gray.dtype == np.uint8 and gray.shape == (20, 30)
    assert gray[0, 0] == round(0.299 * 200 + 0.587 * 50)
    assert gray[10, 10] == 100
    assert meta.has_colour and meta.colour_fraction == pytest.approx(30 / 600)
    assert meta.photometric == "RGB"


def test_gray_stored_as_rgb_is_not_colour(tmp_path):
    arr = gradient()
    f = write_png(tmp_path / "rgbgray.png", np.stack([arr] * 3, axis=-1))
    gray, meta = read_image(f)
    np.testing.assert_array_equal(gray, arr)
    assert not meta.has_colour


def test_rgba_transparent_regions_are_black_and_not_colour(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., :3] = 90
    rgba[..., 3] = 255
    rgba[:, :10, :3] = (255, 0, 0)  # pure red under the transparent band
    rgba[:, :10, 3] = 0
    f = write_png(tmp_path / "rgba.png", rgba)
    gray, meta = read_image(f)
    assert (gray[:, :10] == 0).all()
    assert (gray[:, 10:] == 90).all()
    assert meta.transparent_fraction == pytest.approx(1 / 3)
    assert not meta.has_colour  # red is hidden by alpha 0
    assert meta.photometric == "RGBA"


def test_palette_png_is_converted(tmp_path):
    img = Image.fromarray(gradient() % 4, mode="L").convert("P")
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 80, 80, 80] + [0] * (256 * 3 - 12))
    f = tmp_path / "pal.png"
    img.save(f)
    gray, meta = read_image(f)
    assert meta.photometric == "P" and meta.has_colour
    idx = gradient() % 4
    assert (gray[idx == 3] == 80).all()
    assert (gray[idx == 1] == round(0.299 * 255)).all()


def test_content_wins_over_extension(tmp_path):
    f = write_png(tmp_path / "looks.png", gradient())
    renamed = f.rename(tmp_path / "actually_png.jpg")
    gray, meta = read_image(renamed)
    assert meta.format == "png"
    np.testing.assert_array_equal(gray, gradient())


def test_multiframe_tiff_refused(tmp_path):
    f = tmp_path / "stack.tif"
    frames = [Image.fromarray(gradient()), Image.fromarray(gradient()[::-1].copy())]
    frames[0].save(f, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match="multi-frame") as err:
        read_image(f)
    assert_one_line(err, f)


# --------------------------------------------------------------------------------- DICOM


def test_dicom_monochrome2_8bit_and_spacing(tmp_path):
    arr = gradient()
    f = write_dicom(tmp_path / "m2.dcm", arr, spacing_cm=0.0075)
    gray, meta = read_image(f)
    np.testing.assert_array_equal(gray, arr)
    assert meta.format == "dicom" and meta.bit_depth == 8
    assert meta.pixel_spacing_mm == pytest.approx(0.075)
    assert meta.photometric == "MONOCHROME2" and not meta.has_colour


def test_dicom_monochrome1_is_inverted(tmp_path):
    arr = gradient()
    gray, meta = read_image(write_dicom(tmp_path / "m1.dcm", arr, "MONOCHROME1"))
    np.testing.assert_array_equal(gray, 255 - arr)
    assert meta.photometric == "MONOCHROME1"


def test_dicom_16bit_and_monochrome1_12bit(tmp_path):
    arr = gradient(dtype=np.uint16)  # values < 4096: 12 bits stored in 16
    gray, meta = read_image(write_dicom(tmp_path / "m16.dcm", arr, bits_stored=12))
    assert gray.dtype == np.uint16 and meta.bit_depth == 16
    np.testing.assert_array_equal(gray, arr)
    inv, _ = read_image(write_dicom(tmp_path / "m1_12.dcm", arr, "MONOCHROME1", bits_stored=12))
    np.testing.assert_array_equal(inv, 4095 - arr)


def test_dicom_rgb_and_ybr_are_converted_once(tmp_path):
    from pydicom.pixels import convert_color_space

    rgb = np.zeros((16, 20, 3), np.uint8)
    rgb[...] = 60
    rgb[:8, :10] = (200, 50, 0)
    expected = round(0.299 * 200 + 0.587 * 50)
    g_rgb, m_rgb = read_image(write_dicom(tmp_path / "rgb.dcm", rgb, "RGB"))
    assert g_rgb[0, 0] == expected and g_rgb[15, 19] == 60
    assert m_rgb.has_colour and m_rgb.colour_fraction == pytest.approx(0.25)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    g_ybr, m_ybr = read_image(write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL"))
    assert abs(int(g_ybr[0, 0]) - expected) <= 2  # not converted twice
    assert abs(int(g_ybr[15, 19]) - 60) <= 2
    assert m_ybr.has_colour


def test_dicom_palette_colour(tmp_path):
    idx = (gradient() % 3).astype(np.uint8)
    red = np.zeros(256, np.uint16)
    green = np.zeros(256, np.uint16)
    blue = np.zeros(256, np.uint16)
    red[1] = 65535  # index 1 = pure red
    red[2] = green[2] = blue[2] = 100 * 257  # index 2 = gray 100
    f = write_dicom(tmp_path / "pal.dcm", idx, "PALETTE COLOR", palette=(red, green, blue))
    gray, meta = read_image(f)
    assert gray.dtype == np.uint8
    assert (gray[idx == 0] == 0).all()
    assert (gray[idx == 2] == 100).all()
    assert (gray[idx == 1] == round(0.299 * 255)).all()
    assert meta.has_colour and meta.colour_fraction == pytest.approx((idx == 1).mean())


def test_dicom_multiframe_reads_one_frame(tmp_path):
    cine = np.stack([gradient(), gradient()[::-1].copy(), gradient() // 2])
    f = write_dicom(tmp_path / "cine.dcm", cine, frames=3)
    gray, meta = read_image(f)
    assert np.array_equal(gray, cine[0])
    assert meta.extra["n_frames"] == 3 and meta.extra["frame"] == 0
    gray2, meta2 = read_image(f, frame=2)
    assert np.array_equal(gray2, cine[2]) and meta2.extra["frame"] == 2
    with pytest.raises(ImageReadError, match=r"frame 3 asked for, but the DICOM has 3") as err:
        read_image(f, frame=3)
    assert_one_line(err, f)


def test_dicom_without_pixel_data_refused(tmp_path):
    f = write_dicom(tmp_path / "nopix.dcm", None)
    with pytest.raises(ImageReadError, match="no pixel data") as err:
        read_image(f)
    assert_one_line(err, f)


@pytest.mark.parametrize("keep", [0.5, 0.95])
def test_truncated_dicom_refused(tmp_path, keep):
    full = write_dicom(tmp_path / "full.dcm", gradient(64, 64))
    data = full.read_bytes()
    f = tmp_path / f"trunc{keep}.dcm"
    f.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageReadError, match=r"truncated|no pixel data") as err:
        read_image(f)
    assert_one_line(err, f)


def test_text_named_dcm_is_not_dicom(tmp_path):
    f = tmp_path / "notes.dcm"
    f.write_text("this is a text file, not DICOM\n" * 5)
    with pytest.raises(ImageReadError, match="not a DICOM file") as err:
        read_image(f)
    assert_one_line(err, f)


def test_image_size_reads_headers(tmp_path):
    assert image_size(write_png(tmp_path / "a.png", gradient(24, 32))) == (24, 32)
    assert image_size(write_dicom(tmp_path / "a.dcm", gradient(24, 32))) == (24, 32)


#: Planted in DICOM header fields: no error message may ever contain it.
MARKER = "ZQXMARK"

#: Header fields the readers use, each given the marker as text (``LO`` for numeric fields:
#: a hostile file may declare any VR), and the words its error names (None: read anyway).
MARKED_FIELDS = {
    "Modality": ("CS", "modality (not a known modality code) is not ultrasound"),
    "PhotometricInterpretation": ("CS", "PhotometricInterpretation is not a standard value"),
    "NumberOfFrames": ("LO", "DICOM header field NumberOfFrames is not an integer"),
    "Rows": ("LO", "DICOM header field Rows is not an integer"),
    "Columns": ("LO", "DICOM header field Columns is not an integer"),
    "SamplesPerPixel": ("LO", "DICOM header field SamplesPerPixel is not an integer"),
    "BitsAllocated": ("LO", "DICOM header field BitsAllocated is not an integer"),
    "BitsStored": ("LO", "cannot decode DICOM pixel data"),
    "BurnedInAnnotation": ("CS", None),
    "PixelSpacing": ("LO", None),
}


def _every_message(f: Path) -> list[str]:
    """Run every reader on ``f``; return each error message (and burned-in warning)."""
    from buscad.data.io import burned_in_warning, read_dicom_header, sniff_format

    out = []
    for call in (
        lambda: sniff_format(f),
        lambda: burned_in_warning(*read_image(f)),
        lambda: image_size(f),
        lambda: read_dicom_header(f),
        lambda: read_mask(f),
    ):
        try:
            res = call()
            out += [res] if isinstance(res, str) else []
        except InputFileError as exc:
            out.append(str(exc))
    return out


@pytest.mark.parametrize("field", sorted(MARKED_FIELDS))
def test_dicom_errors_name_the_field_never_its_text(tmp_path, field):
    import pydicom
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataelem import DataElement

    f = write_dicom(tmp_path / "m.dcm", gradient(), "MONOCHROME1")
    ds = pydicom.dcmread(f)
    vr, words = MARKED_FIELDS[field]
    ds[tag_for_keyword(field)] = DataElement(tag_for_keyword(field), vr, MARKER)
    ds.save_as(f)
    messages = _every_message(f)
    assert not [m for m in messages if MARKER in m]
    if words is None:
        gray, _ = read_image(f)
        assert gray.shape == gradient().shape
    else:
        assert any(words in m for m in messages), messages


def test_dicom_transfer_syntax_text_is_not_echoed(tmp_path):
    f = write_dicom(tmp_path / "ts.dcm", gradient())
    raw = f.read_bytes()
    assert raw.count(b"1.2.840.10008.1.2.1\x00") == 1  # Explicit VR Little Endian
    f.write_bytes(raw.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.ZQXMARK.99999.1\x00"))
    messages = _every_message(f)
    assert not [m for m in messages if MARKER in m]
    assert any("cannot decode DICOM pixel data (an unknown transfer syntax)" in m for m in messages)


def test_truncated_dicom_with_marked_text_never_echoes_it(tmp_path):
    marked = {
        k: MARKER
        for k in ("ImageType", "SeriesDescription", "StudyDescription", "BodyPartExamined")
    }
    full = write_dicom(
        tmp_path / "full.dcm", gradient(), manufacturer=MARKER, model=MARKER, extra=marked
    )
    data = full.read_bytes()
    starts = [i for i in range(len(data)) if data.startswith(MARKER.encode(), i)]
    assert len(starts) == 6
    f = tmp_path / "cut.dcm"
    n_errors = 0
    for cut in sorted({c + k for c in starts for k in (-9, -3, -1, 0, 3)}):
        f.write_bytes(data[:cut])  # truncated right at or inside a marked element
        messages = _every_message(f)
        assert not [m for m in messages if MARKER in m], cut
        n_errors += sum(": " in m for m in messages)
    assert n_errors > 0


# ------------------------------------------------------------------------------ bad input


def test_zero_byte_file(tmp_path):
    f = tmp_path / "empty.png"
    f.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty \(0 bytes\)") as err:
        read_image(f)
    assert_one_line(err, f)


def test_truncated_png(tmp_path):
    f = truncated_png(tmp_path / "trunc.png")
    with pytest.raises(ImageReadError, match="truncated") as err:
        read_image(f)
    assert_one_line(err, f)


def test_png_with_garbage_after_header(tmp_path):
    f = tmp_path / "header_only.png"
    f.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 4)
    with pytest.raises(ImageReadError, match=r"corrupt|truncated|identify") as err:
        read_image(f)
    assert_one_line(err, f)


def test_text_file_named_png(tmp_path):
    f = tmp_path / "fake.png"
    f.write_text("not an image\nsecond line\n")
    with pytest.raises(ImageReadError, match="not a recognised image") as err:
        read_image(f)
    assert_one_line(err, f)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageReadError, match="file not found") as err:
        read_image(tmp_path / "nope.png")
    assert_one_line(err, tmp_path / "nope.png")
    with pytest.raises(ImageReadError, match="is a directory"):
        read_image(tmp_path)


def test_labelme_json_given_as_image(tmp_path):
    f = labelme(tmp_path / "a.json", "a.png", (10, 10), [[1, 1], [5, 1], [5, 5]])
    with pytest.raises(ImageReadError, match="JSON file, not an image") as err:
        read_image(f)
    assert_one_line(err, f)


def test_decompression_bomb_header_refused(tmp_path):
    f = bomb_png(tmp_path / "bomb.png")
    with pytest.raises(ImageReadError, match="decompression bomb") as err:
        read_image(f)
    assert_one_line(err, f)
    with pytest.raises(ImageReadError, match="decompression bomb"):
        image_size(f)
    with pytest.raises(MaskError, match="decompression bomb"):
        read_mask(f)


def test_pixel_limit_applies_to_dicom(tmp_path, monkeypatch):
    f = write_dicom(tmp_path / "big.dcm", gradient(40, 40))
    monkeypatch.setattr(bio, "MAX_PIXELS", 1000)
    with pytest.raises(ImageReadError, match="above the 1000 pixel limit") as err:
        read_image(f)
    assert_one_line(err, f)
    png = write_png(tmp_path / "big.png", gradient(40, 40))
    with pytest.raises(ImageReadError, match=r"pixel limit|decompression bomb"):
        read_image(png)


# ----------------------------------------------------------------------------------- masks


def test_binary_mask_any_nonzero_and_union(tmp_path):
    a = np.zeros((20, 30), np.uint8)
    a[2:6, 3:9] = 1  # value 1, not 255: still lesion
    b = np.zeros((20, 30), np.uint8)
    b[10:15, 20:25] = 255
    fa = write_png(tmp_path / "x_mask.png", a)
    fb = write_png(tmp_path / "x_mask_1.png", b)
    m = read_mask([fa, fb], shape=(20, 30))
    assert m.dtype == bool and m.shape == (20, 30)
    assert m.sum() == 4 * 6 + 5 * 5
    assert m[3, 4] and m[12, 22] and not m[0, 0]
    m2 = read_mask(f"{fa};{fb}", shape=(20, 30))  # manifest-style ;-joined cell
    np.testing.assert_array_equal(m, m2)
    assert split_mask_paths(f" {fa} ; {fb} ;") == [str(fa), str(fb)]
    assert split_mask_paths(float("nan")) == []


def test_one_bit_and_rgba_masks(tmp_path):
    bits = np.zeros((12, 12), bool)
    bits[3:6, 3:6] = True
    f1 = tmp_path / "bits.png"
    Image.fromarray(bits).save(f1)  # mode "1"
    np.testing.assert_array_equal(read_mask(f1), bits)
    rgba = np.zeros((12, 12, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere...
    rgba[3:6, 3:6, 3] = 255  # ...but opaque only in the lesion
    f2 = write_png(tmp_path / "rgba_mask.png", rgba)
    np.testing.assert_array_equal(read_mask(f2), bits)


def test_jpeg_mask_ignores_compression_noise(tmp_path):
    m = np.zeros((32, 32), np.uint8)
    m[8:24, 8:24] = 255
    f = write_png(tmp_path / "m.jpg", m)
    got = read_mask(f)
    assert abs(int(got.sum()) - 256) <= 16
    assert not got[0, 0] and not got[31, 31]


def test_labelme_polygon_is_rasterised(tmp_path):
    write_png(tmp_path / "img.png", gradient(40, 50))
    f = labelme(tmp_path / "img.json", "img.png", (40, 50), [[10, 5], [30, 5], [30, 25], [10, 25]])
    m = read_mask(f, shape=(40, 50))
    assert m.shape == (40, 50)
    assert m[15, 20] and not m[30, 40] and not m[2, 2]
    assert m.sum() == 21 * 21  # PIL fills the closed polygon including its outline
    mask, img_path = read_labelme(f)
    assert img_path == (tmp_path / "img.png").resolve()
    np.testing.assert_array_equal(mask, m)


def test_labelme_pointing_at_missing_image(tmp_path):
    f = labelme(tmp_path / "orphan.json", "gone.png", (40, 50), [[1, 1], [9, 1], [9, 9]])
    with pytest.raises(MaskError, match="missing image") as err:
        read_mask(f)
    assert_one_line(err, f)
    mask, _ = read_labelme(f, require_image=False)
    assert mask.shape == (40, 50) and mask.any()


def test_labelme_without_shapes_or_invalid(tmp_path):
    write_png(tmp_path / "img.png", gradient(10, 10))
    f = tmp_path / "noshape.json"
    f.write_text(json.dumps({"shapes": [], "imagePath": "img.png"}))
    with pytest.raises(MaskError, match="no polygon") as err:
        read_mask(f)
    assert_one_line(err, f)
    g = tmp_path / "broken.json"
    g.write_text("{not json")
    with pytest.raises(MaskError, match="not valid LabelMe JSON") as err:
        read_mask(g)
    assert_one_line(err, g)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("three_d", [False, True])
def test_nifti_mask_as_itksnap_writes_it(tmp_path, suffix, three_d):
    import SimpleITK as sitk

    m = np.zeros((20, 30), np.uint8)
    m[2:8, 5:25] = 1  # asymmetric, so a transposition would be caught
    m[15, 1] = 2  # another label value: still lesion
    arr = m[None] if three_d else m
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.1, 0.1, 1.0) if three_d else (0.1, 0.1))
    f = tmp_path / f"seg{suffix}"
    sitk.WriteImage(img, str(f))
    got = read_mask(f, shape=(20, 30))
    np.testing.assert_array_equal(got, m > 0)


def test_nifti_multislice_refused(tmp_path):
    import SimpleITK as sitk

    f = tmp_path / "vol.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 8, 8), np.uint8)), str(f))
    with pytest.raises(MaskError, match="expected one 2-D slice") as err:
        read_mask(f)
    assert_one_line(err, f)


def test_mask_of_wrong_size(tmp_path):
    f = write_mask(tmp_path / "small_mask.png", (10, 12), (1, 4, 1, 4))
    with pytest.raises(MaskError, match=r"mask size 12x10 differs from image size 30x20") as err:
        read_mask(f, shape=(20, 30))
    assert_one_line(err, f)


def test_union_of_masks_of_different_sizes(tmp_path):
    a = write_mask(tmp_path / "a.png", (10, 12), (1, 4, 1, 4))
    b = write_mask(tmp_path / "b.png", (11, 12), (1, 4, 1, 4))
    with pytest.raises(MaskError, match="differs from the other mask files") as err:
        read_mask([a, b])
    assert_one_line(err, b)


def test_missing_empty_and_garbage_masks(tmp_path):
    with pytest.raises(MaskError, match="mask file not found") as err:
        read_mask(tmp_path / "none.png")
    assert_one_line(err, tmp_path / "none.png")
    e = tmp_path / "empty_mask.png"
    e.write_bytes(b"")
    with pytest.raises(MaskError, match="empty") as err:
        read_mask(e)
    assert_one_line(err, e)
    t = truncated_png(tmp_path / "trunc_mask.png")
    with pytest.raises(MaskError, match="truncated") as err:
        read_mask(t)
    assert_one_line(err, t)
    g = tmp_path / "text_mask.png"
    g.write_text("hello")
    with pytest.raises(MaskError, match="not a recognised mask") as err:
        read_mask(g)
    assert_one_line(err, g)
    with pytest.raises(MaskError, match="no mask path"):
        read_mask([])


# ------------------------------------------------------------------------------- fuzzing

#: Raise with BUSCAD_FUZZ_EXAMPLES=5000 to hunt for new failures; CI runs a fixed sample.
FUZZ_EXAMPLES = int(os.environ.get("BUSCAD_FUZZ_EXAMPLES", "60"))
_FUZZ = dict(
    deadline=None,
    derandomize=FUZZ_EXAMPLES <= 60,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
_MAGICS = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"BM", b"II*\x00", b"\x00" * 128 + b"DICM"]


@settings(max_examples=FUZZ_EXAMPLES, **_FUZZ)
@given(
    magic=st.sampled_from(_MAGICS),
    body=st.binary(min_size=0, max_size=400),
    suffix=st.sampled_from([".png", ".dcm", ".jpg", ".tif"]),
)
def test_garbage_never_escapes_as_an_untyped_error(tmp_path, magic, body, suffix):
    f = tmp_path / f"fuzz{suffix}"
    f.write_bytes(magic + body)
    try:
        read_image(f)
    except ImageReadError as exc:
        assert "\n" not in str(exc) and str(f) in str(exc)
    try:
        read_mask(f)
    except MaskError as exc:
        assert "\n" not in str(exc) and str(f) in str(exc)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 10**9)
    | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=FUZZ_EXAMPLES, **_FUZZ)
@given(
    shapes=st.lists(
        st.fixed_dictionaries(
            {
                "points": _json_values,
                "shape_type": st.sampled_from(["polygon", "rectangle", "circle", 3]),
            }
        ),
        max_size=3,
    ),
    height=_json_values,
    width=_json_values,
)
def test_malformed_labelme_gives_mask_errors(tmp_path, shapes, height, width):
    write_png(tmp_path / "i.png", gradient(10, 12))
    f = tmp_path / "lm.json"
    f.write_text(
        json.dumps(
            {"shapes": shapes, "imagePath": "i.png", "imageHeight": height, "imageWidth": width}
        )
    )
    try:
        m = read_mask(f)
        assert m.dtype == bool and m.ndim == 2
    except MaskError as exc:
        assert "\n" not in str(exc) and str(f) in str(exc)
