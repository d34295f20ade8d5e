"""Per-pixel class agreement of a checkpoint's FP32 model (torch) and an OpenVINO artifact that takes
the image and gives the class map (`export --target openvino`, the default io), on a data split.

    python benchmarks/int8_agreement.py RUN/fp32.pt EXPORT/openvino_int8_os16 [--split val]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeseg.data import open_source  # noqa: E402
from edgeseg.data.preprocess import preprocess, resize_image  # noqa: E402
from edgeseg.train.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--split", default="val")
    args = ap.parse_args()
    import openvino as ov

    meta = json.loads((args.artifact / "meta.json").read_text())
    if (meta.get("io") or {}).get("output") != "labels" or meta["io"]["input"] != "image":
        sys.exit(f"error: '{args.artifact}' does not take an image and give labels; export it with the default --input/--output")
    size = tuple(meta["input_size"])
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, meta["output_stride"]).eval()
    model.set_input_size(size)
    compiled = ov.Core().compile_model(str(args.artifact / meta["model_file"]), "CPU")
    d = meta["data"]
    source = open_source(d["format"], d.get("root"), args.split, d.get("synthetic"))
    norm = ckpt["normalization"]
    same = total = 0
    for i in range(len(source)):
        frame = np.asarray(resize_image(source.load(i)[0], size), np.uint8)
        with torch.no_grad():
            want = model(torch.from_numpy(preprocess(frame, None, norm["mean"], norm["std"]))).argmax(1)[0].numpy()
        got = np.asarray(compiled(frame[None])[0])[0]
        same, total = same + int((want == got).sum()), total + want.size
    print(
        json.dumps({"checkpoint": str(args.checkpoint), "artifact": str(args.artifact), "images": len(source), "agreement": same / total})
    )


if __name__ == "__main__":
    main()
