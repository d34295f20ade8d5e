"""OpenVINO end to end, a decoded frame to its class map: image in / labels out vs tensor in / logits out.

For each output stride and precision, the same checkpoint is exported twice with `edgeseg export
--target openvino`: the default (`--input image --output labels`: uint8 NHWC pixels in, normalised by
OpenVINO's PrePostProcessor; argmax in the graph, a uint8 class map out) and `--input tensor
--output logits` (what every artifact was before: numpy resizes and normalises, the model gives
11 float logits per pixel, numpy resizes them and takes the argmax). Both are timed interleaved in
one run: every round times every artifact of an output stride on the same frames, the order
rotated each round, so a background load slows all alike. A frame's end-to-end time is

    pre    decoded uint8 H x W x 3 -> the model's input (edgeseg.export.io_spec.feed)
    model  the compiled model's call (LATENCY hint, one infer request, as `edgeseg bench`)
    post   the model's output -> the H x W class map (io_spec.class_map)

The table gives the median over rounds of each artifact's per-frame median (with the min-max of
the round medians), and the ratio tensor->logits / image->labels of end-to-end time; the mIoU of
both on the same frames (they must be identical, or nearly: the normalisation's rounding).

    nice -n 5 .venv/bin/python benchmarks/openvino_io.py FP32_CKPT INT8_CKPT [--strides 8 16 32] \
        [--images 101] [--rounds 5] [--out runs/openvino_io] [--json FILE]

INT8_CKPT is a calibrated or QAT checkpoint (edgeseg calibrate, or train --qat). Artifacts already
in --out are reused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeseg.data.sources import open_source  # noqa: E402
from edgeseg.export.artifacts import artifact_name, export_artifact  # noqa: E402
from edgeseg.export.base import ExportRequest, get_target  # noqa: E402
from edgeseg.export.io_spec import class_map, feed, io_of  # noqa: E402
from edgeseg.export.meta import read_meta  # noqa: E402
from edgeseg.metrics import ConfusionMatrix  # noqa: E402

CONTRACTS = {"image->labels": {}, "tensor->logits": {"input": "tensor", "output": "logits"}}


def artifacts(ckpt: Path, precision: str, stride: int, out: Path) -> dict[str, Path]:
    found = {}
    for name, options in CONTRACTS.items():
        variant = None if not options else "tensor-logits"
        folder = out / artifact_name("openvino", precision, stride, variant)
        if not (folder / "meta.json").is_file():
            request = ExportRequest(checkpoint=ckpt, precision=precision, output_stride=stride, out_dir=out, options=dict(options))
            print(f"exporting {folder.name} ...", flush=True)
            folder = export_artifact(request, "openvino").folder
        found[name] = folder
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp32", type=Path)
    ap.add_argument("int8", type=Path)
    ap.add_argument("--strides", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--images", type=int, default=101)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "openvino_io")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.images < 1 or args.rounds < 1:
        ap.error("--images and --rounds take 1 or more")
    target = get_target("openvino")
    table = []
    for stride in args.strides:
        arts = {(p, c): f for p, ck in (("fp32", args.fp32), ("int8", args.int8)) for c, f in artifacts(ck, p, stride, args.out).items()}
        metas = {k: read_meta(f) for k, f in arts.items()}
        first = next(iter(metas.values()))
        d = first["data"]
        source = open_source(d["format"], d.get("root"), d.get("split") or "val", d.get("synthetic"))
        n = min(args.images, len(source))
        frames = [source.load(i) for i in range(n)]
        runners = {k: target.load(arts[k], metas[k], threads=args.threads).runner for k in arts}
        times: dict[tuple[str, str], dict[str, list[float]]] = {k: {"pre": [], "model": [], "post": [], "e2e": []} for k in arts}
        cms = {k: ConfusionMatrix(len(first["classes"]["names"]), source.classes.ignore_index) for k in arts}
        keys = list(arts)
        for k in keys:  # warm-up: one frame each
            runners[k].run(
                feed(
                    frames[0][0],
                    io_of(metas[k]),
                    tuple(metas[k]["input_size"]),
                    first["normalization"]["mean"],
                    first["normalization"]["std"],
                )
            )
        for r in range(args.rounds):
            order = keys[r % len(keys) :] + keys[: r % len(keys)]
            for k in order:
                io, size, norm = io_of(metas[k]), tuple(metas[k]["input_size"]), metas[k]["normalization"]
                pre, mod, post = [], [], []
                for image, mask in frames:
                    t0 = time.perf_counter_ns()
                    x = feed(image, io, size, norm["mean"], norm["std"])
                    t1 = time.perf_counter_ns()
                    y = runners[k].run(x)
                    t2 = time.perf_counter_ns()
                    pred = class_map(y[0], io, mask.shape[:2])
                    t3 = time.perf_counter_ns()
                    pre.append(t1 - t0)
                    mod.append(t2 - t1)
                    post.append(t3 - t2)
                    if r == 0:
                        cms[k].update(pred, mask)
                for name, values in (("pre", pre), ("model", mod), ("post", post), ("e2e", [a + b + c for a, b, c in zip(pre, mod, post)])):
                    times[k][name].append(float(np.median(values)) / 1e6)
            print(f"OS{stride} round {r + 1}/{args.rounds} done", flush=True)
        for precision in ("fp32", "int8"):
            new, old = (precision, "image->labels"), (precision, "tensor->logits")
            row = {"output_stride": stride, "precision": precision, "images": n, "rounds": args.rounds}
            for k, label in ((new, "image_labels"), (old, "tensor_logits")):
                row[label] = {name: {"median": float(np.median(v)), "min": min(v), "max": max(v)} for name, v in times[k].items()}
                row[label]["miou"] = cms[k].summary(list(first["classes"]["names"]))["miou"]
            row["e2e_ratio"] = row["tensor_logits"]["e2e"]["median"] / row["image_labels"]["e2e"]["median"]
            table.append(row)
    print()
    print(
        "| OS | precision | e2e image->labels ms (pre / model / post) | e2e tensor->logits ms (pre / model / post) | speed-up | mIoU labels / logits |"
    )
    print("|---|---|---|---|---|---|")
    for row in table:
        cells = []
        for label in ("image_labels", "tensor_logits"):
            t = row[label]
            cells.append(
                f"{t['e2e']['median']:.2f} ({t['e2e']['min']:.2f}-{t['e2e']['max']:.2f}; "
                f"{t['pre']['median']:.2f} / {t['model']['median']:.2f} / {t['post']['median']:.2f})"
            )
        mious = f"{row['image_labels']['miou']:.2f} / {row['tensor_logits']['miou']:.2f}"
        print(f"| {row['output_stride']} | {row['precision'].upper()} | {cells[0]} | {cells[1]} | {row['e2e_ratio']:.2f}x | {mious} |")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
