"""Data formats on fixtures built in tmp_path, and bad data that must name the file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeseg.data import open_source
from edgeseg.data.classes import CAMVID, CITYSCAPES, VOC
from edgeseg.errors import DataError

H, W = 12, 16


def _image(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mask(values: list[int], h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice(np.asarray(values, np.uint8), (h, w))


def _save(path: Path, array: np.ndarray, palette: list[int] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if palette is not None:
        img.putpalette(palette)
    img.save(path)
    return path


# --- formats ----------------------------------------------------------------------------------


def _camvid(root: Path, split: str = "train", n: int = 2) -> dict[str, np.ndarray]:
    masks = {}
    for i in range(n):
        stem = f"0001TP_{i:03d}"
        masks[stem] = _mask(list(range(12)), seed=i)
        _save(root / split / f"{stem}.png", _image(i))
        _save(root / f"{split}annot" / f"{stem}.png", masks[stem])
    return masks


def test_camvid_layout_maps_void_to_ignore(tmp_path: Path) -> None:
    raw = _camvid(tmp_path)
    src = open_source("camvid", tmp_path, "train")
    assert len(src) == 2 and src.classes == CAMVID and src.classes.num_classes == 11
    for i in range(len(src)):
        image, mask = src.load(i)
        expected = raw[src.name(i)].copy()
        expected[expected == 11] = 255
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(mask, expected)
        assert (mask == 255).any() and set(np.unique(mask)) <= set(range(11)) | {255}


def test_camvid_matches_by_stem_with_any_extension(tmp_path: Path) -> None:
    _save(tmp_path / "val" / "a.jpg", _image(0))
    _save(tmp_path / "val" / "b.PNG", _image(1))
    _save(tmp_path / "valannot" / "a.png", _mask([0, 3]))
    _save(tmp_path / "valannot" / "b.png", _mask([4, 11]))
    src = open_source("camvid", tmp_path, "val")
    assert [src.name(i) for i in range(len(src))] == ["a", "b"]
    assert set(np.unique(src.load(1)[1])) == {4, 255}


def _folder(root: Path) -> None:
    for i, stem in enumerate(["a", "b", "c"]):
        _save(root / "images" / f"{stem}.png", _image(i))
        _save(root / "masks" / f"{stem}.png", _mask([0, 1, 2, 255], seed=i))
    (root / "classes.txt").write_text("sky\nroad\n\ncar\n")
    (root / "train.txt").write_text("a\nc\n")
    (root / "val.txt").write_text("b\n")


def test_folder_format_with_split_lists(tmp_path: Path) -> None:
    _folder(tmp_path)
    train = open_source("folder", tmp_path, "train")
    assert [train.name(i) for i in range(len(train))] == ["a", "c"]
    assert train.classes.names == ("sky", "road", "car") and train.classes.ignore_index == 255
    np.testing.assert_array_equal(train.load(1)[1], _mask([0, 1, 2, 255], seed=2))
    np.testing.assert_array_equal(train.load(1)[0], _image(2))
    # A split without a list file takes every image.
    assert len(open_source("folder", tmp_path, "all")) == 3


def _voc(base: Path) -> np.ndarray:
    mask = _mask([0, 1, 15, 20, 255], seed=3)
    palette = [v for c in VOC.colors for v in c]
    for stem in ("2007_000032", "2007_000039"):
        _save(base / "JPEGImages" / f"{stem}.jpg", _image(0))
        _save(base / "SegmentationClass" / f"{stem}.png", mask, palette)
        _save(base / "SegmentationClassAug" / f"{stem}.png", mask)  # the augmented set uses plain L masks
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_000032\n")
    (lists / "val.txt").write_text("2007_000039\n")
    (lists / "train_aug.txt").write_text("2007_000032\n2007_000039\n")
    return mask


@pytest.mark.parametrize("root", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_voc_palette_masks_hold_indices(tmp_path: Path, root: str) -> None:
    mask = _voc(tmp_path / "VOCdevkit" / "VOC2012")
    assert Image.open(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png").mode == "P"
    val = open_source("voc", tmp_path / root, "val")
    assert len(val) == 1 and val.name(0) == "2007_000039" and val.classes.num_classes == 21
    image, got = val.load(0)
    np.testing.assert_array_equal(got, mask)  # palette indices, not the palette's colours
    assert image.shape == (H, W, 3)
    aug = open_source("voc", tmp_path / root, "train_aug")
    assert len(aug) == 2 and aug.pairs[0][1] == tmp_path / "VOCdevkit/VOC2012/SegmentationClassAug/2007_000032.png"
    np.testing.assert_array_equal(aug.load(1)[1], mask)


# Cityscapes labelIds 0..33 -> train ids, copied from cityscapesScripts' labels.py (trainId column).
CITYSCAPES_TRAIN_ID = [255, 255, 255, 255, 255, 255, 255, 0, 1, 255, 255, 2, 3, 4, 255, 255, 255, 5,
                       255, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 255, 255, 16, 17, 18]  # fmt: skip


def test_cityscapes_label_ids_map_to_train_ids(tmp_path: Path) -> None:
    ids = np.arange(35, dtype=np.uint8).reshape(5, 7)
    ids[-1, -1] = 255
    for split, city in (("train", "aachen"), ("train", "bremen"), ("val", "lindau")):
        stem = f"{city}_000000_000019"
        _save(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", _image(0, 5, 7))
        _save(tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)
    src = open_source("cityscapes", tmp_path, "train")
    assert len(src) == 2 and src.classes == CITYSCAPES and src.classes.num_classes == 19
    _, mask = src.load(0)
    expected = np.array(CITYSCAPES_TRAIN_ID + [255], np.uint8).reshape(5, 7)
    np.testing.assert_array_equal(mask, expected)
    assert sorted(set(mask.ravel()) - {255}) == list(range(19))


def test_unknown_format_and_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unknown data format 'camvd' \(did you mean 'camvid'\?\)"):
        open_source("camvd", tmp_path, "train")
    with pytest.raises(DataError) as info:
        open_source("camvid", None, "train")
    assert str(info.value) == "data format 'camvid' needs a data root: set data.root or pass --data"
    with pytest.raises(DataError) as info:
        open_source("camvid", tmp_path / "nowhere", "train")
    assert str(info.value) == f"data root '{tmp_path / 'nowhere'}' does not exist; pass the folder that holds the 'camvid' data"


# --- bad data: each error names the file --------------------------------------------------------


def _bad_truncated_jpeg(root: Path) -> Path:
    path = root / "images" / "a.jpg"
    Image.fromarray(_image(0, 64, 64)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:400])
    return path


def _bad_not_an_image(root: Path) -> Path:
    path = root / "images" / "a.png"
    path.write_text("this is a text file with an image extension\n")
    return path


def _bad_mask_size(root: Path) -> Path:
    return _save(root / "masks" / "a.png", _mask([0, 1], H + 1, W))


def _bad_mask_value(root: Path) -> Path:
    return _save(root / "masks" / "a.png", _mask([0, 1, 7]))


def _bad_rgb_mask(root: Path) -> Path:
    return _save(root / "masks" / "a.png", np.stack([_mask([0, 1])] * 3, axis=-1))


def _bad_16bit_mask(root: Path) -> Path:
    path = root / "masks" / "a.png"
    Image.fromarray(_mask([0, 1]).astype(np.uint16) * 300).save(path)
    return path


def _bad_empty_split(root: Path) -> Path:
    path = root / "train.txt"
    path.write_text("\n")
    return path


def _bad_missing_masks_folder(root: Path) -> Path:
    for p in (root / "masks").iterdir():
        p.unlink()
    (root / "masks").rmdir()
    return root / "masks"


def _bad_image_without_mask(root: Path) -> Path:
    (root / "masks" / "a.png").unlink()
    return root / "images" / "a.png"


def _bad_split_names_unknown_image(root: Path) -> Path:
    path = root / "train.txt"
    path.write_text("a\nzz\n")
    return path


# Each case: how to break a valid one-image data set, and the whole error line ({file}: the broken
# file or folder, {root}: the data set; {lib}: the decoder's own reason, which its version words).
BAD = {
    "truncated_jpeg": (
        _bad_truncated_jpeg,
        "image '{file}' cannot be decoded ({lib}); it is corrupt, truncated or not an image: replace or remove it",
    ),
    "not_an_image": (
        _bad_not_an_image,
        "image '{file}' cannot be decoded ({lib}); it is corrupt, truncated or not an image: replace or remove it",
    ),
    "mask_size": (_bad_mask_size, "mask '{file}' is 16x13 but its image is 16x12; masks must have their image's size"),
    "mask_value": (
        _bad_mask_value,
        "mask '{file}' has value 7, outside the classes of this format (allowed: 0-1, 255); fix the mask or choose the right data.format",
    ),
    "rgb_mask": (
        _bad_rgb_mask,
        "mask '{file}' is a colour (RGB) image; masks must hold class indices in one channel (mode L or P): convert the colours to indices",
    ),
    "16bit_mask": (
        _bad_16bit_mask,
        "mask '{file}' (I;16) has value 300, not a class index 0-255; save masks as 8-bit PNGs of class indices",
    ),
    "empty_split": (_bad_empty_split, "split list '{file}' is empty; list one image stem a line, or delete it to use all images"),
    "missing_folder": (_bad_missing_masks_folder, "masks folder '{file}' does not exist; check data.root and the split name"),
    "image_without_mask": (_bad_image_without_mask, "image '{file}' has no mask with stem 'a' in {root}/masks; add it or remove the image"),
    "unknown_stem_in_list": (_bad_split_names_unknown_image, "'{file}' names 'zz', which is not in {root}/images; fix the list"),
}


def _line(template: str, **paths: Path) -> str:
    """A regular expression for exactly `template`: {name} is that path, {lib} any library text."""
    pattern = re.escape(template).replace(r"\{lib\}", r"[^;]+")
    for name, path in paths.items():
        pattern = pattern.replace(rf"\{{{name}\}}", re.escape(str(path)))
    return pattern


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_raises_data_error_naming_the_file(tmp_path: Path, case: str) -> None:
    root = tmp_path / "ds"
    _save(root / "images" / "a.png", _image(0))
    _save(root / "masks" / "a.png", _mask([0, 1]))
    (root / "classes.txt").write_text("bg\nfg\n")
    make, template = BAD[case]
    if case == "truncated_jpeg":
        (root / "images" / "a.png").unlink()
    bad_file = make(root)
    with pytest.raises(DataError) as info:
        src = open_source("folder", root, "train")
        for i in range(len(src)):
            src.load(i)
    assert re.fullmatch(_line(template, file=bad_file, root=root), str(info.value)), str(info.value)


def test_empty_camvid_split_names_the_split(tmp_path: Path) -> None:
    (tmp_path / "val").mkdir()
    (tmp_path / "valannot").mkdir()
    with pytest.raises(DataError) as info:
        open_source("camvid", tmp_path, "val")
    assert str(info.value) == f"no image/mask pairs found for CamVid split 'val' in {tmp_path}; check the data root, format and split"
    with pytest.raises(DataError) as info:
        open_source("camvid", tmp_path, "train")
    assert str(info.value) == f"CamVid image folder '{tmp_path / 'train'}' does not exist; check data.root and the split name"


def test_camvid_mask_value_outside_classes(tmp_path: Path) -> None:
    _save(tmp_path / "train" / "a.png", _image(0))
    bad = _save(tmp_path / "trainannot" / "a.png", _mask([0, 12]))
    with pytest.raises(DataError, match=rf"mask '{bad}' has value 12.*allowed: 0-11, 255"):
        open_source("camvid", tmp_path, "train").load(0)


def test_voc_missing_list_and_image(tmp_path: Path) -> None:
    base = tmp_path / "VOCdevkit" / "VOC2012"
    _voc(base)
    with pytest.raises(DataError, match=r"test\.txt' does not exist; use train, val or train_aug"):
        open_source("voc", tmp_path, "test")
    (base / "JPEGImages" / "2007_000039.jpg").unlink()
    with pytest.raises(DataError, match=r"2007_000039\.jpg' does not exist"):
        open_source("voc", tmp_path, "val").load(0)
