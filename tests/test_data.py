"""Data: synthetic lesions, layouts, pairing, splits, the preprocessing cache, the CLI.

Every layout is built in a temp dir from the synthetic generator; the real
isic2017-mini folder is read through ``shared_dir`` (skipped without it).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.core.io import read_json, write_json
from bench.data import cache, decode, prepared
from bench.data.cache import cache_home, prepare_data
from bench.data.layouts import DataError, DataWarning, detect_layout, index_dataset
from bench.data.splits import make_split
from bench.data.synthetic import make_synthetic

SMALL = (40, 56)  # (H, W) keeps every test fast


def _prep(root: Path, tmp: Path, **kw) -> prepared.PreparedData:
    kw.setdefault("size", 32)
    kw.setdefault("cache_dir", tmp / "cache")
    kw.setdefault("progress", False)
    kw.setdefault("workers", 1)
    return prepare_data(root, **kw)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_seeded_varied_and_binary(tmp_path):
    a = make_synthetic(tmp_path / "a", n=6, seed=3)
    b = make_synthetic(tmp_path / "b", n=6, seed=3)
    c = make_synthetic(tmp_path / "c", n=6, seed=4)
    names = sorted(p.name for p in (a / "images").iterdir())
    assert len(names) == 6
    for name in names:
        assert (a / "images" / name).read_bytes() == (b / "images" / name).read_bytes()
    assert any((a / "images" / n).read_bytes() != (c / "images" / n).read_bytes() for n in names)
    sizes = set()
    for p in sorted((a / "masks").iterdir()):
        m = np.asarray(Image.open(p))
        assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 255}  # a lesion and skin
        assert 0.01 < (m > 0).mean() < 0.6
        img = Image.open(a / "images" / f"{p.stem}.jpg")
        assert img.mode == "RGB" and img.size == m.shape[::-1]
        sizes.add(img.size)
    assert len(sizes) > 1  # sizes vary by default


def test_synthetic_lesion_is_darker_than_skin(tmp_path):
    root = make_synthetic(tmp_path, n=3, seed=0, size=SMALL, ext="png")
    for p in sorted((root / "masks").iterdir()):
        m = np.asarray(Image.open(p)) > 0
        img = np.asarray(Image.open(root / "images" / f"{p.stem}.png")).astype(float).mean(-1)
        assert img[m].mean() < img[~m].mean() - 20


# ----------------------------------------------------------------------------- layouts


@pytest.mark.parametrize(
    ("layout", "splits"),
    [
        ("flat", {}),
        ("isic2017", {"train": 6, "val": 1, "test": 3}),
        ("isic2018", {"train": 6, "val": 1, "test": 3}),
        ("ph2", {}),
        ("prepared", {"train": 7, "test": 3}),
    ],
)
def test_each_layout_is_detected_and_paired_by_id(tmp_path, layout, splits):
    root = make_synthetic(tmp_path / layout, n=10, seed=1, size=SMALL, layout=layout)
    lay = detect_layout(root)
    assert lay.name == layout
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean layout gives no warning
        index = index_dataset(root)
    assert len(index) == 10
    assert {k: len(v) for k, v in index.official_split_ids().items()} == splits
    for s in index.samples:
        assert s.image.stem == s.id
        assert s.mask is not None and s.mask.stem.startswith(s.id)
        assert not s.id.endswith("_superpixels")
        # The pair really belongs together: same size.
        assert Image.open(s.image).size == Image.open(s.mask).size


def test_official_layout_one_level_down_and_test_without_ground_truth(tmp_path):
    root = make_synthetic(tmp_path / "dl" / "ISIC2018", n=10, seed=1, size=SMALL, layout="isic2018")
    shutil.rmtree(root / "ISIC2018_Task1_Test_GroundTruth")
    lay = detect_layout(tmp_path / "dl")
    assert lay.name == "isic2018" and lay.base == root
    assert lay.official_splits == ("train", "val")
    with pytest.warns(DataWarning, match="ISIC2018_Task1-2_Test_Input"):
        index = index_dataset(tmp_path / "dl")
    assert len(index) == 7


def test_pairing_ignores_listing_order(tmp_path):
    # Masks sort differently from images (suffix + an orphan that sorts first): pairing by
    # sorted listings would shift every pair by one.
    root = tmp_path / "flat"
    src = make_synthetic(tmp_path / "src", n=4, seed=2, size=SMALL, ext="png")
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, sid in enumerate(["d", "c", "b", "a"]):
        shutil.copy(src / "images" / f"SYN_{i:05d}.png", root / "images" / f"{sid}.png")
        shutil.copy(src / "masks" / f"SYN_{i:05d}.png", root / "masks" / f"{sid}_mask.png")
    shutil.copy(src / "masks" / "SYN_00000.png", root / "masks" / "0orphan_mask.png")
    with pytest.warns(DataWarning, match="0orphan_mask.png"):
        index = index_dataset(root)
    by_id = index.by_id()
    for i, sid in enumerate(["d", "c", "b", "a"]):
        assert by_id[sid].mask == root / "masks" / f"{sid}_mask.png"
        assert (
            Image.open(by_id[sid].mask).tobytes()
            == Image.open(src / "masks" / f"SYN_{i:05d}.png").tobytes()
        )


def test_mask_suffix_auto_and_explicit(tmp_path):
    root = make_synthetic(tmp_path, n=3, seed=0, size=SMALL, mask_suffix="_segmentation")
    assert all(s.mask.name.endswith("_segmentation.png") for s in index_dataset(root).samples)
    assert len(index_dataset(root, mask_suffix="_segmentation")) == 3
    with (
        pytest.raises(DataError, match="SYN_00000.jpg"),
        pytest.warns(DataWarning, match="without an image"),
    ):
        index_dataset(root, mask_suffix="_lesion")  # wrong suffix: every mask missing


def test_no_layout_says_what_was_tried_and_found(tmp_path):
    (tmp_path / "pictures").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError) as err:
        detect_layout(tmp_path)
    msg = str(err.value)
    for word in ("ISIC 2017", "ISIC 2018", "PH2", "prepared", "flat", "pictures/", "notes.txt"):
        assert word in msg
    with pytest.raises(DataError, match="no such folder"):
        detect_layout(tmp_path / "missing")


def test_isic2017_mini_loads_as_official_isic2017(shared_dir, tmp_path):
    root = shared_dir / "data" / "isic2017-mini"
    if not root.is_dir():
        pytest.skip(f"{root} not present")
    index = index_dataset(root)
    assert index.layout.name == "isic2017"
    assert index.layout.official_splits == ("train",)  # only the Training folders
    assert len(index) == 456
    assert all(s.mask.name == f"{s.id}_segmentation.png" for s in index.samples)
    # Only training exists, so the split is seeded 7:3 with val carved from train.
    split = make_split(index.ids, seed=42)
    assert {k: len(v) for k, v in split.items()} == {"train": 287, "val": 32, "test": 137}


@pytest.mark.slow
def test_isic2017_mini_cache(shared_dir, tmp_path):
    root = shared_dir / "data" / "isic2017-mini"
    prep = prepare_data(
        root, size=64, cache_dir=tmp_path / "c", split_file=tmp_path / "s.json", progress=False
    )
    assert prep.name == "isic2017"
    assert {k: len(v) for k, v in prep.split_ids.items()} == {"train": 287, "val": 32, "test": 137}
    h, w = prep.original_size("test", 0)
    assert prep.original_mask("test", 0).shape == (h, w)


# ----------------------------------------------------------------------------- splits


def test_make_split_deterministic_disjoint_complete():
    ids = [f"id{i:03d}" for i in range(100)]
    a, b = make_split(ids, seed=7), make_split(list(reversed(ids)), seed=7)
    assert a == b  # independent of input order
    assert make_split(ids, seed=8) != a
    assert {k: len(v) for k, v in a.items()} == {"train": 63, "val": 7, "test": 30}
    sets = [set(v) for v in a.values()]
    assert sum(len(s) for s in sets) == 100 and set.union(*sets) == set(ids)
    given = make_split(ids, seed=7, test_ids=ids[:10], val_fraction=0.5)
    assert given["test"] == ids[:10] and len(given["val"]) == 45
    with pytest.raises(ValueError, match="test_fraction"):
        make_split(ids, test_fraction=1.5)


def test_seeded_split_written_and_reused(tmp_path):
    root = make_synthetic(tmp_path / "d", n=20, seed=0, size=SMALL)
    p = _prep(root, tmp_path)
    assert p.split_file.parent == tmp_path / "cache" / "splits"  # not in the data folder
    assert p.split_file.name.startswith("d-") and sorted(x.name for x in root.iterdir()) == [
        "images",
        "masks",
    ]
    saved = read_json(p.split_file)
    assert saved["source"] == "seeded" and saved["seed"] == 42
    assert saved["test_fraction"] == 0.3 and saved["val_fraction"] == 0.1
    assert {k: len(v) for k, v in p.split_ids.items()} == {"train": 13, "val": 1, "test": 6}
    # An edited split file is what the next run uses (reused, not recomputed).
    saved["splits"]["train"].append(saved["splits"]["test"].pop())
    write_json(p.split_file, saved)
    q = _prep(root, tmp_path)
    assert q.split_ids == saved["splits"] and q.fingerprint != p.fingerprint
    assert len(q.images("train")) == 14
    # Asking for another seed with the same file is an error, not a silent reuse.
    with pytest.raises(DataError, match=p.split_file.name):
        _prep(root, tmp_path, seed=1)
    # A dataset whose content changed gets its own split file (keyed by content) ...
    shutil.copy(root / "images" / "SYN_00000.jpg", root / "images" / "SYN_99999.jpg")
    shutil.copy(root / "masks" / "SYN_00000.png", root / "masks" / "SYN_99999.png")
    r = _prep(root, tmp_path)
    assert r.split_file != p.split_file and "SYN_99999" in {
        i for v in r.split_ids.values() for i in v
    }
    # ... and an explicit split file that no longer matches the dataset is an error.
    with pytest.raises(DataError, match="SYN_99999"):
        _prep(root, tmp_path, split_file=p.split_file)


def test_official_split_used_and_prepared_layout_carves_val(tmp_path):
    root = make_synthetic(tmp_path / "i", n=10, seed=0, size=SMALL, layout="isic2017")
    p = _prep(root, tmp_path)
    assert p.split_ids == {
        k: sorted(v) for k, v in index_dataset(root).official_split_ids().items()
    }
    assert read_json(p.split_file)["source"] == "official"
    seeded = _prep(root, tmp_path, split_mode="seeded", split_file=tmp_path / "s.json")
    assert {k: len(v) for k, v in seeded.split_ids.items()} == {"train": 6, "val": 1, "test": 3}

    root = make_synthetic(tmp_path / "p", n=20, seed=0, size=SMALL, layout="prepared")
    p = _prep(root, tmp_path, val_fraction=0.25)
    authors_val = sorted(x.stem for x in (root / "val" / "images").iterdir())
    assert p.split_ids["test"] == authors_val  # their "val" folder is the test part
    assert len(p.split_ids["val"]) == round(0.25 * 14) and not set(p.split_ids["val"]) & set(
        authors_val
    )
    # The carved val part is seeded: another val_fraction must not silently reuse it.
    with pytest.raises(DataError, match=r"\.json: made with .*val_fraction"):
        _prep(root, tmp_path, val_fraction=0.1)
    assert _prep(root, tmp_path, val_fraction=0.25).split_ids == p.split_ids


# ----------------------------------------------------------------------------- cache


def _direct(path: Path, size: int, mask: bool = False) -> np.ndarray:
    """The documented preprocessing, written out: JPEGs decoded at the smallest DCT scale
    that stays >= size (PIL draft), bilinear resize; masks nearest, then > 127."""
    im = Image.open(path)
    if mask:
        return (np.asarray(im.resize((size, size), Image.Resampling.NEAREST)) > 127).astype(
            np.uint8
        )
    im.draft("RGB", (size, size))
    return np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))


def test_reduced_jpeg_decode_is_close_to_a_full_decode(tmp_path):
    root = make_synthetic(tmp_path, n=2, seed=0, size=(200, 280))
    for p in sorted((root / "images").iterdir()):
        full = np.asarray(Image.open(p).resize((48, 48), Image.Resampling.BILINEAR)).astype(float)
        drafted = _direct(p, 48).astype(float)
        assert not np.array_equal(full, drafted)  # the draft really was used
        assert np.abs(full - drafted).mean() < 3.0  # ... and changes little
    png = make_synthetic(tmp_path / "png", n=1, seed=0, size=(200, 280), ext="png")
    p = _prep(png, tmp_path, size=48, test_fraction=0.0, val_fraction=0.0)
    src = png / "images" / "SYN_00000.png"
    plain = np.asarray(Image.open(src).resize((48, 48), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(p.images("train")[0], plain)


@pytest.fixture(scope="module")
def flat_set(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flat")
    root = make_synthetic(tmp / "d", n=20, seed=5)  # varied sizes, JPEG
    return root, tmp


def test_cache_round_trips(flat_set):
    root, tmp = flat_set
    p = _prep(root, tmp, size=48, workers=2)
    assert p.name == "d" and p.layout.name == "flat" and p.size == 48
    assert p.cache_path.parent == tmp / "cache"
    for split in ("train", "val", "test"):
        imgs, msks = p.images(split), p.masks(split)
        assert isinstance(imgs, np.memmap) and imgs.dtype == np.uint8
        assert imgs.shape == (len(p.split_ids[split]), 48, 48, 3) and msks.shape == imgs.shape[:3]
        ds = p.dataset(split)
        for i, sid in enumerate(p.split_ids[split]):
            s = p.sample(split, i)
            assert s.id == sid
            np.testing.assert_array_equal(imgs[i], _direct(s.image, 48))
            np.testing.assert_array_equal(msks[i], _direct(s.mask, 48, mask=True))
            orig = np.asarray(Image.open(s.mask))
            assert p.original_size(split, i) == orig.shape
            np.testing.assert_array_equal(p.original_mask(split, i), (orig > 127).astype(np.uint8))
            x, y, j = ds[i]
            assert x.dtype == torch.uint8 and x.shape == (3, 48, 48) and y.shape == (1, 48, 48)
            assert j == i and torch.equal(x.permute(1, 2, 0), torch.from_numpy(np.array(imgs[i])))
    # val/test keep their full-resolution masks in the cache itself.
    assert (p.cache_path / "test_orig_masks.npz").is_file()
    assert not (p.cache_path / "train_orig_masks.npz").exists()


def test_cache_reused_then_rebuilt_when_a_file_changes(flat_set, monkeypatch):
    root, tmp = flat_set
    p = _prep(root, tmp, size=40)
    calls = []
    real = cache._build_cache
    monkeypatch.setattr(cache, "_build_cache", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert _prep(root, tmp, size=40).cache_path == p.cache_path and not calls  # reused
    assert (
        _prep(root, tmp, size=36).cache_path != p.cache_path and len(calls) == 1
    )  # size is in the key
    # Change one training image's pixels (and mtime): a new cache with the new pixels.
    s = p.sample("train", 0)
    old = np.asarray(Image.open(s.image))
    Image.fromarray(255 - old).save(s.image, quality=92)
    st = s.image.stat()
    os.utime(s.image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    q = _prep(root, tmp, size=40)
    assert q.cache_path != p.cache_path and len(calls) == 2
    np.testing.assert_array_equal(q.images("train")[0], _direct(s.image, 40))


def test_half_built_cache_is_never_used(flat_set, monkeypatch):
    root, tmp = flat_set
    cache = tmp / "atomic"
    real = decode._decode_job
    n = {"calls": 0}

    def failing(job):
        n["calls"] += 1
        if n["calls"] == 7:
            raise KeyboardInterrupt  # interrupted mid-build
        return real(job)

    monkeypatch.setattr(decode, "_decode_job", failing)
    with pytest.raises(KeyboardInterrupt):
        _prep(root, tmp, size=28, cache_dir=cache, workers=1)
    # no cache, no temp folder left behind (only the split file, written before the build)
    assert [p.name for p in cache.iterdir()] == ["splits"]
    monkeypatch.setattr(decode, "_decode_job", real)
    p = _prep(root, tmp, size=28, cache_dir=cache, workers=1)
    assert len(list(cache.iterdir())) == 2 and (p.cache_path / "meta.json").is_file()


def test_batches_and_loader(flat_set):
    root, tmp = flat_set
    p = _prep(root, tmp, size=32)
    n = len(p.split_ids["train"])
    seen = []
    for x, y, idx in p.batches(
        "train", 4, shuffle=True, generator=torch.Generator().manual_seed(0)
    ):
        assert x.shape[1:] == (3, 32, 32) and y.shape[1:] == (1, 32, 32) and x.dtype == torch.uint8
        np.testing.assert_array_equal(x[0].permute(1, 2, 0).numpy(), p.images("train")[int(idx[0])])
        seen += idx.tolist()
    assert sorted(seen) == list(range(n)) and seen != list(range(n))
    got = [
        i for _, _, idx in p.loader("train", 4, shuffle=True, augment=True, workers=0) for i in idx
    ]
    assert sorted(got) == list(range(n))
    for x, y, _ in p.batches("train", 5, augment=True, drop_last=True):
        assert len(x) == 5 and set(y.unique().tolist()) <= {0, 1}


# ----------------------------------------------------------------------------- CLI


def test_cli_synth_info_split_check_cache(tmp_path, capsys):
    from bench.cli import main

    root = tmp_path / "cli"
    assert main(["data", "synth", str(root), "--n", "12", "--size", "40", "56"]) == 0
    assert len(list((root / "images").iterdir())) == 12
    assert main(["data", "info", str(root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "flat" in out and "12" in out and "40x56" in out and "lesion" in out
    assert main(["data", "split", str(root), "--seed", "3", "--test-fraction", "0.25"]) == 0
    split_file = Path(capsys.readouterr().out.split(" -> ")[1].rsplit(": ", 1)[0])
    assert split_file.parent == cache_home() / "splits" and not (root / "split.json").exists()
    saved = read_json(split_file)
    assert saved["seed"] == 3 and len(saved["splits"]["test"]) == 3
    assert main(["data", "split", str(root)]) == 1  # exists: needs --force
    assert main(["data", "check", str(root), "--quiet"]) == 0
    assert "0 error(s)" in capsys.readouterr().out
    assert (
        main(
            [
                "data",
                "cache",
                str(root),
                "--input-size",
                "32",
                "--seed",
                "3",
                "--test-fraction",
                "0.25",
                "--cache-dir",
                str(tmp_path / "c"),
                "--quiet",
            ]
        )
        == 0
    )
    assert "train=8" in capsys.readouterr().out
    (root / "images" / "SYN_00003.jpg").write_bytes(b"not a jpeg")
    assert main(["data", "check", str(root), "--quiet", "--workers", "1"]) == 1
    assert "SYN_00003.jpg" in capsys.readouterr().out


def test_cli_bench_reports_both_sources(tmp_path, capsys):
    from bench.cli import main

    root = make_synthetic(tmp_path / "b", n=12, seed=0, size=SMALL)  # 7 train images
    args = ["data", "bench", str(root), "--input-size", "32", "--cache-dir", str(tmp_path / "c")]
    assert main([*args, "--quiet"]) == 2  # the CLI turns the DataError into one line
    assert "fewer than one batch of 8" in capsys.readouterr().err
    out = tmp_path / "bench.json"
    fast = ["--seconds", "0.2", "--workers", "0", "--batch", "3", "--quiet", "--json", str(out)]
    assert main(args + fast) == 0
    text = capsys.readouterr().out
    assert "cache" in text and "files" in text and "samples/s" in text
    res = read_json(out)
    assert set(res["samples_per_s"]) == {"cache", "files, 0 workers"}
    assert all(v > 0 for v in res["samples_per_s"].values())
    assert "environment" in res and "command" in res


def test_read_only_dataset_is_left_untouched(tmp_path, monkeypatch):
    root = make_synthetic(tmp_path / "ro", n=10, seed=0, size=SMALL)
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache-home"))
    os.chmod(root, 0o555)  # as shared reference data is: even root should not write there
    try:
        p = prepare_data(root, size=24, workers=1, progress=False)
    finally:
        os.chmod(root, 0o755)
    assert sorted(x.name for x in root.iterdir()) == ["images", "masks"]
    assert p.cache_path.parent == tmp_path / "cache-home"
    assert p.split_file.parent == tmp_path / "cache-home" / "splits"
    assert p.split_file.name.startswith("ro-") and p.split_file.is_file()


def test_cache_home_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "a"))
    assert cache_home() == tmp_path / "a"
    monkeypatch.delenv("SEGBENCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_home() == tmp_path / "xdg" / "segbench"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_home() == Path.home() / ".cache" / "segbench"


def test_split_shipped_with_the_data_is_read_and_opt_in_writes_beside_it(tmp_path):
    root = make_synthetic(tmp_path / "d", n=20, seed=0, size=SMALL)
    p = _prep(root, tmp_path, split_file=root / "split.json")  # opt-in: written beside the data
    assert (root / "split.json").is_file()
    q = prepare_data(root, size=24, workers=1, progress=False, cache_dir=tmp_path / "c")
    assert q.split_file == root / "split.json" and q.split_ids == p.split_ids
