"""Every bad input gives an error or warning that names the file; `check` lists them all."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bench.data.cache import prepare_data
from bench.data.checks import check_dataset
from bench.data.decode import load_pair
from bench.data.layouts import DataError, DataWarning, index_dataset
from bench.data.synthetic import make_synthetic


@pytest.fixture
def flat(tmp_path):
    return make_synthetic(tmp_path / "d", n=8, seed=0, size=(40, 56))


def _prep(root, tmp_path, **kw):
    return prepare_data(
        root, size=24, cache_dir=tmp_path / "cache", workers=1, progress=False, **kw
    )


def test_corrupt_image(flat, tmp_path):
    bad = flat / "images" / "SYN_00002.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg" * 10)
    with pytest.raises(DataError, match="SYN_00002.jpg.*cannot decode image"):
        _prep(flat, tmp_path)
    assert not list((tmp_path / "cache").glob("d-*"))  # no cache from a failed build
    (p,) = check_dataset(flat, workers=1)
    assert p.path == bad and p.severity == "error" and "cannot decode" in p.message


def test_truncated_image(flat, tmp_path):
    bad = flat / "images" / "SYN_00005.jpg"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with pytest.raises(DataError, match="SYN_00005.jpg") as err:
        _prep(flat, tmp_path)
    assert "truncated" in str(err.value)
    assert [p.path for p in check_dataset(flat, workers=1)] == [bad]


def test_mask_of_another_size(flat, tmp_path):
    bad = flat / "masks" / "SYN_00001.png"
    Image.open(bad).resize((30, 20), Image.Resampling.NEAREST).save(bad)
    with pytest.raises(DataError, match=r"SYN_00001.png: mask is 30x20 but its image is 56x40"):
        _prep(flat, tmp_path)
    assert [p.path for p in check_dataset(flat, workers=1)] == [bad]


def test_missing_mask(flat, tmp_path):
    (flat / "masks" / "SYN_00003.png").unlink()
    with pytest.raises(DataError, match=r"SYN_00003.jpg: no mask SYN_00003.png"):
        index_dataset(flat)
    with pytest.raises(DataError, match="SYN_00003.jpg"):
        _prep(flat, tmp_path)
    with pytest.warns(DataWarning, match="SYN_00003.jpg.*skipped"):
        index = index_dataset(flat, skip_missing=True)
    assert "SYN_00003" not in index.ids and len(index) == 7


def test_mask_not_0_255_reports_values_and_binarizes_only_when_asked(flat, tmp_path):
    bad = flat / "masks" / "SYN_00004.png"
    m = np.asarray(Image.open(bad)).copy()
    m[m == 255] = 200
    m[:2, :2] = 100
    Image.fromarray(m).save(bad)
    with pytest.raises(DataError, match=r"SYN_00004.png: mask values are not 0/255 .*0, 100, 200"):
        _prep(flat, tmp_path)
    with pytest.warns(DataWarning, match="SYN_00004.png"):
        p = _prep(flat, tmp_path, binarize=True, split_file=tmp_path / "s.json")
    split = next(s for s in ("train", "val", "test") if "SYN_00004" in p.split_ids[s])
    i = p.split_ids[split].index("SYN_00004")
    full = (
        p.original_mask(split, i)
        if split != "train"
        else load_pair(p.sample(split, i), None, binarize=True)[1]
    )
    np.testing.assert_array_equal(full, (m >= 128).astype(np.uint8))  # 100 -> 0, 200 -> 1
    # A 0/1 mask is also reported; binarising keeps its lesion (not thresholded at 128).
    Image.fromarray((m >= 128).astype(np.uint8)).save(bad)
    (p,) = check_dataset(flat, workers=1)
    assert p.path == bad and "0, 1" in p.message
    sample = next(s for s in index_dataset(flat).samples if s.id == "SYN_00004")
    assert load_pair(sample, None, binarize=True)[1].sum() == (m >= 128).sum()


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grayscale_or_rgba_image_is_converted_with_a_warning(flat, tmp_path, mode):
    path = flat / "images" / "SYN_00006.png"
    src = flat / "images" / "SYN_00006.jpg"
    Image.open(src).convert(mode).save(path)
    src.unlink()
    with pytest.warns(DataWarning, match=f"SYN_00006.png: image mode {mode} converted to RGB"):
        p = _prep(flat, tmp_path)
    split = next(s for s in ("train", "val", "test") if "SYN_00006" in p.split_ids[s])
    img = p.images(split)[p.split_ids[split].index("SYN_00006")]
    assert img.shape == (24, 24, 3)
    if mode == "L":
        assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    (w,) = check_dataset(flat, workers=1)
    assert w.path == path and w.severity == "warning"


def test_empty_folder(tmp_path):
    (tmp_path / "e" / "images").mkdir(parents=True)
    (tmp_path / "e" / "masks").mkdir()
    with pytest.raises(DataError, match=r"e/images: holds no image files"):
        index_dataset(tmp_path / "e")
    with pytest.raises(DataError, match="no known dataset layout.*Found: e/$"):
        index_dataset(tmp_path)  # holds only e/, which is not a layout itself
    (tmp_path / "bare").mkdir()
    with pytest.raises(DataError, match="bare: no known dataset layout.*empty folder"):
        index_dataset(tmp_path / "bare")


def test_empty_mask_folder(flat):
    for p in (flat / "masks").iterdir():
        p.unlink()
    with pytest.raises(DataError, match=r"masks: holds no mask files"):
        index_dataset(flat)


def test_duplicate_ids(flat, tmp_path):
    dup = flat / "images" / "SYN_00000.png"
    Image.open(flat / "images" / "SYN_00000.jpg").save(dup)
    with pytest.raises(DataError, match="duplicate ID 'SYN_00000'") as err:
        index_dataset(flat)
    assert "SYN_00000.png" in str(err.value) and "SYN_00000.jpg" in str(err.value)
    # The same ID in two official splits.
    root = make_synthetic(tmp_path / "i", n=10, seed=0, size=(40, 56), layout="isic2017")
    for sub, name in (
        ("ISIC-2017_Validation_Data", "ISIC_0000000.jpg"),
        ("ISIC-2017_Validation_Part1_GroundTruth", "ISIC_0000000_segmentation.png"),
    ):
        src = root / sub.replace("Validation", "Training") / name
        (root / sub / name).write_bytes(src.read_bytes())
    with pytest.raises(DataError, match="ISIC-2017_Validation_Data/ISIC_0000000.jpg: duplicate ID"):
        index_dataset(root)


def test_check_lists_every_problem_in_one_pass(flat):
    (flat / "images" / "SYN_00000.jpg").write_bytes(b"garbage")
    (flat / "masks" / "SYN_00001.png").unlink()
    m = flat / "masks" / "SYN_00002.png"
    Image.fromarray(np.asarray(Image.open(m)) // 2).save(m)  # values 0 / 127
    s = flat / "masks" / "SYN_00003.png"
    Image.open(s).resize((10, 10)).save(s)
    g = flat / "images" / "SYN_00004.jpg"
    Image.open(g).convert("L").save(g)
    (flat / "masks" / "stray.png").write_bytes(m.read_bytes())
    problems = check_dataset(flat, workers=2)
    found = {(p.path.name, p.severity) for p in problems}
    assert found == {
        ("SYN_00000.jpg", "error"),
        ("SYN_00001.jpg", "error"),
        ("SYN_00002.png", "error"),
        ("SYN_00003.png", "error"),
        ("SYN_00004.jpg", "warning"),
        ("stray.png", "warning"),
    }
    assert all(str(p).startswith(f"{p.severity}: {p.path}") for p in problems)
    assert check_dataset(flat.parent / "nowhere")[0].kind == "layout"
