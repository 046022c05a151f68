"""Duplicate images: found by pixel and perceptual hash, kept on one side of seeded splits,
reported where a split (official or a file) puts them on two sides."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.cli import main
from bench.data.duplicates import (
    NEAR_THRESHOLD,
    find_duplicates,
    group_duplicates,
    hash_image_file,
    match_images,
    straddling,
)
from bench.data.layouts import DataWarning, index_dataset
from bench.data.splits import make_split, resolve_split
from bench.data.synthetic import make_synthetic


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_CACHE", str(tmp_path / "cache"))


def _with_copies(root: Path) -> Path:
    """A 40-image synthetic set where SYN_00039 is a byte copy of SYN_00000 and SYN_00038
    a re-encoded, slightly brightened copy of SYN_00001 (a near copy)."""
    make_synthetic(root, n=40, size=(96, 128), seed=3)
    img, msk = root / "images", root / "masks"
    shutil.copy(img / "SYN_00000.jpg", img / "SYN_00039.jpg")
    shutil.copy(msk / "SYN_00000.png", msk / "SYN_00039.png")
    arr = np.asarray(Image.open(img / "SYN_00001.jpg").convert("RGB")).astype(int) + 6
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(img / "SYN_00038.jpg", quality=70)
    shutil.copy(msk / "SYN_00001.png", msk / "SYN_00038.png")
    return root


def test_exact_and_near_copies_are_grouped_and_nothing_else(tmp_path):
    root = _with_copies(tmp_path / "d")
    groups, hashes = find_duplicates(index_dataset(root))
    assert [(g.ids, g.kind) for g in groups] == [
        (("SYN_00000", "SYN_00039"), "exact"),
        (("SYN_00001", "SYN_00038"), "near"),
    ]
    assert 0 < groups[1].max_distance <= NEAR_THRESHOLD
    # unrelated synthetic lesions stay far apart
    others = {k: v for k, v in hashes.items() if k not in {"SYN_00038", "SYN_00039"}}
    assert group_duplicates(others) == []


def test_a_downscaled_recompressed_copy_is_a_near_copy(tmp_path):
    root = make_synthetic(tmp_path / "d", n=2, size=(512, 512), seed=1)
    src = root / "images" / "SYN_00000.jpg"
    small = tmp_path / "small.jpg"
    Image.open(src).resize((256, 256), Image.BILINEAR).save(small, quality=75)
    a, b = hash_image_file(src), hash_image_file(small)
    assert a.pixel != b.pixel and a.distance(b) <= NEAR_THRESHOLD


def test_make_split_keeps_groups_together_and_is_unchanged_without_groups():
    ids = [f"I{i:03d}" for i in range(100)]
    plain = make_split(ids, 42, 0.3, 0.1)
    assert make_split(ids, 42, 0.3, 0.1, groups=()) == plain
    # a group whose members the plain split puts on both sides of train/test
    a = plain["test"][0]
    b = plain["train"][0]
    c = plain["val"][0]
    grouped = make_split(ids, 42, 0.3, 0.1, groups=[(a, b, c)])
    side = {i: k for k, v in grouped.items() for i in v}
    assert side[a] == side[b] == side[c]
    assert {k: len(v) for k, v in grouped.items()} == {k: len(v) for k, v in plain.items()}
    assert straddling(group_duplicates({}), grouped) == []


def test_seeded_split_of_a_folder_with_copies_does_not_leak(tmp_path):
    root = _with_copies(tmp_path / "d")
    index = index_dataset(root)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)  # a leak would warn
        split, meta = resolve_split(index, tmp_path / "split.json", 42, 0.3, 0.1, "seeded")
    side = {i: k for k, v in split.items() for i in v}
    assert side["SYN_00000"] == side["SYN_00039"] and side["SYN_00001"] == side["SYN_00038"]
    saved = json.loads((tmp_path / "split.json").read_text())
    assert saved["duplicates"]["leaks"] == [] and len(saved["duplicates"]["groups"]) == 2


def test_a_new_split_searches_for_duplicates_once(tmp_path, monkeypatch):
    # the groups that shape the split are the ones its leak check uses: found once
    from bench.data import duplicates

    root = _with_copies(tmp_path / "d")
    index = index_dataset(root)
    calls = []
    real = duplicates.find_duplicates

    def counted(*args, **kwargs):
        calls.append(args[0].root)
        return real(*args, **kwargs)

    monkeypatch.setattr(duplicates, "find_duplicates", counted)
    _, meta = resolve_split(index, tmp_path / "split.json", 42, 0.3, 0.1, "seeded")
    assert calls == [index.root]
    assert meta["duplicates"]["leaks"] == [] and len(meta["duplicates"]["groups"]) == 2


def test_a_leaking_split_file_is_warned_about_with_the_ids(tmp_path):
    root = _with_copies(tmp_path / "d")
    index = index_dataset(root)
    ids = sorted(index.ids)
    keep = ("SYN_00000", "SYN_00039", "SYN_00001", "SYN_00038")
    test = ["SYN_00039", *[i for i in ids if i not in keep][:11]]
    hand = {"splits": {"test": test, "val": [], "train": [i for i in ids if i not in test]}}
    path = tmp_path / "hand.json"
    path.write_text(json.dumps(hand))
    with pytest.warns(DataWarning, match=r"SYN_00000 \(train\) = SYN_00039 \(test\)"):
        _, meta = resolve_split(index, path, 42, 0.3, 0.1, "auto")
    assert [g["ids"] for g in meta["duplicates"]["leaks"]] == [["SYN_00000", "SYN_00039"]]


def test_data_check_names_groups_and_leaks_of_a_split_file(tmp_path, capsys):
    root = _with_copies(tmp_path / "d")
    ids = sorted(index_dataset(root).ids)
    path = tmp_path / "hand.json"
    keep = ("SYN_00000", "SYN_00039", "SYN_00001", "SYN_00038")
    test = ["SYN_00038", *[i for i in ids if i not in keep][:11]]
    path.write_text(json.dumps({"splits": {"test": test, "val": [],
                                           "train": [i for i in ids if i not in test]}}))  # fmt: skip
    assert main(["data", "check", str(root), "--quiet", "--split-file", str(path)]) == 0
    out = capsys.readouterr().out
    assert "exact: SYN_00000, SYN_00039" in out
    assert "LEAK near: SYN_00001 (train), SYN_00038 (test)" in out


def test_match_images_by_id_pixels_and_phash(tmp_path):
    root = _with_copies(tmp_path / "d")
    _, hashes = find_duplicates(index_dataset(root))
    ref = {"SYN_00000": hashes["SYN_00000"], "SYN_00001": hashes["SYN_00001"]}
    query = {k: hashes[k] for k in ("SYN_00000", "SYN_00039", "SYN_00038", "SYN_00005")}
    m = match_images(query, ref)
    assert m["SYN_00000"]["by"] == "id"
    assert m["SYN_00039"] == {"match": "SYN_00000", "by": "pixel", "distance": 0}
    assert m["SYN_00038"]["by"] == "phash" and m["SYN_00038"]["match"] == "SYN_00001"
    assert "SYN_00005" not in m


# ---------------------------------------------------------------- the real ISIC 2017 pool


@pytest.fixture(scope="module")
def isic256(shared_dir) -> Path:
    root = shared_dir / "data" / "isic2017-256"
    if not root.is_dir():
        pytest.skip(f"{root} absent")
    return root


def test_isic2017_256_seeded_split_is_1505_645_and_leak_free(isic256, tmp_path):
    index = index_dataset(isic256)
    split, meta = resolve_split(index, tmp_path / "s.json", 42, 0.3, 0.1, "seeded")
    assert len(split["train"]) + len(split["val"]) == 1505 and len(split["test"]) == 645
    assert meta["duplicates"]["leaks"] == []
    # the ungrouped split of the same seed leaked: the exact pair lay across train/test
    groups, _ = find_duplicates(index)
    plain = make_split(sorted(index.ids), 42, 0.3, 0.1)
    leaks = straddling(groups, plain)
    assert ["ISIC_0012127", "ISIC_0012970"] in [g["ids"] for g in leaks]


def test_data_check_names_the_exact_pair_across_the_official_split(isic256, capsys):
    assert main(["data", "check", str(isic256), "--quiet", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "exact: ISIC_0012127, ISIC_0012970" in out
    assert "LEAK exact: ISIC_0012127 (val), ISIC_0012970 (train)" in out
