"""Class names, colours and ignore index per data set format (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass

IGNORE_INDEX = 255


@dataclass(frozen=True)
class ClassInfo:
    """Names and RGB colours of the classes; `ignore_index` marks void pixels in masks."""

    names: tuple[str, ...]
    colors: tuple[tuple[int, int, int], ...]
    ignore_index: int = IGNORE_INDEX

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return {"names": list(self.names), "colors": [list(c) for c in self.colors], "ignore_index": self.ignore_index}

    @classmethod
    def from_dict(cls, d: dict) -> ClassInfo:
        return cls(tuple(d["names"]), tuple(tuple(c) for c in d["colors"]), int(d.get("ignore_index", IGNORE_INDEX)))


def _palette(n: int) -> tuple[tuple[int, int, int], ...]:
    """The PASCAL VOC colour map (bit-interleaved), used where a format has no colours of its own."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return tuple(colors)


CAMVID = ClassInfo(
    ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist"),
    (
        (128, 128, 128),
        (128, 0, 0),
        (192, 192, 128),
        (128, 64, 128),
        (60, 40, 222),
        (128, 128, 0),
        (192, 128, 128),
        (64, 64, 128),
        (64, 0, 128),
        (64, 64, 0),
        (0, 128, 192),
    ),
)

VOC = ClassInfo(
    (
        "background",
        "aeroplane",
        "bicycle",
        "bird",
        "boat",
        "bottle",
        "bus",
        "car",
        "cat",
        "chair",
        "cow",
        "diningtable",
        "dog",
        "horse",
        "motorbike",
        "person",
        "pottedplant",
        "sheep",
        "sofa",
        "train",
        "tvmonitor",
    ),
    _palette(21),
)

CITYSCAPES = ClassInfo(
    (
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    ),
    (
        (128, 64, 128),
        (244, 35, 232),
        (70, 70, 70),
        (102, 102, 156),
        (190, 153, 153),
        (153, 153, 153),
        (250, 170, 30),
        (220, 220, 0),
        (107, 142, 35),
        (152, 251, 152),
        (70, 130, 180),
        (220, 20, 60),
        (255, 0, 0),
        (0, 0, 142),
        (0, 0, 70),
        (0, 60, 100),
        (0, 80, 100),
        (0, 0, 230),
        (119, 11, 32),
    ),
)

# Cityscapes labelIds (0..33, -1) -> train ids (0..18, 255 ignore): the official table.
CITYSCAPES_ID_TO_TRAIN = {
    7: 0,
    8: 1,
    11: 2,
    12: 3,
    13: 4,
    17: 5,
    19: 6,
    20: 7,
    21: 8,
    22: 9,
    23: 10,
    24: 11,
    25: 12,
    26: 13,
    27: 14,
    28: 15,
    31: 16,
    32: 17,
    33: 18,
}

SYNTHETIC = ClassInfo(
    ("background", "disc", "box", "triangle", "stripe"),
    ((0, 0, 0), (220, 60, 60), (60, 200, 60), (60, 90, 230), (230, 200, 40)),
)


def generic(n: int, names: list[str] | None = None) -> ClassInfo:
    return ClassInfo(tuple(names or [f"class{i}" for i in range(n)]), _palette(n))
