"""Mixed precision under a drop limit: edgeseg's `export --max-drop` vs NNCF's quantize_with_accuracy_control.

For each output stride, from the same FP32 checkpoint and its PTQ checkpoint (`edgeseg calibrate`),
with the same drop limit D (mIoU points) and the same selection images (the first --images val
images, as `edgeseg sensitivity` uses):

    fp32            the FP32 IR (f32 hint): the reference of every delta
    edgeseg int8    `edgeseg export --precision int8` of the PTQ checkpoint: every layer INT8
    edgeseg drop D  the same with `--max-drop D`: the fewest sensitivity-ranked layers kept float
                    (with --max-class-drop C: `--max-drop D --max-class-drop C`, every class within C IoU too)
    nncf int8       nncf.quantize of the FP32 IR (PERFORMANCE preset) on the PTQ checkpoint's calibration images
    nncf ac D       nncf.quantize_with_accuracy_control: the same, reverting layers to float until the
                    mIoU on the selection images is within D of the FP32 IR's

Every model is scored on all val images (mIoU, the class losing most IoU vs fp32), and again on
the held-out ones (those after the selection images, which neither method chose on), and timed
interleaved with OpenVINO on this CPU (LATENCY hint, f32 precision hint, one fixed input): each
round times --runs inferences of every model of the stride, in a rotated order; the table gives
the median of the round medians and each mixed model's latency relative to its own full-INT8
model. Float layers: convolutions the runtime runs in neither u8 nor i8 (read back from the
compiled model).

    nice -n 5 .venv/bin/python benchmarks/accuracy_control.py FP32_CKPT PTQ_CKPT [--strides 8 16 32] \
        [--max-drop 0.2] [--max-class-drop 1.0] [--images 24] [--sensitivity OS=RANKING.json ...] [--rounds 5] [--runs 20] \
        [--out runs/accuracy_control] [--json FILE]

A ranking is measured at the stride it is used at: pass one file per stride (16=os16.json), or
none and each stride's is measured by the export.

Artifacts go to --out (edgeseg's through `edgeseg export`, NNCF's as bare IRs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeseg.bench.accuracy import evaluate_runner  # noqa: E402
from edgeseg.data.sources import open_source  # noqa: E402
from edgeseg.export.artifacts import export_artifact  # noqa: E402
from edgeseg.export.base import ExportRequest  # noqa: E402
from edgeseg.export.common import verification_images  # noqa: E402
from edgeseg.export.mixed import resolve  # noqa: E402
from edgeseg.export.openvino import OpenVINORunner, calibration_images  # noqa: E402
from edgeseg.export.openvino_ir import compile_ir, precision_report  # noqa: E402
from edgeseg.metrics import ConfusionMatrix, worst_class  # noqa: E402
from edgeseg.train.checkpoint import load_checkpoint  # noqa: E402

PLAIN = {"input": "tensor", "output": "logits"}


class HeldOut:
    """The images of `source` from `start` on: those no selection saw."""

    def __init__(self, source: Any, start: int) -> None:
        self.source, self.start = source, start

    def __len__(self) -> int:
        return max(0, len(self.source) - self.start)

    def load(self, i: int) -> Any:
        return self.source.load(self.start + i)


def edgeseg_artifact(ckpt: Path, precision: str, stride: int, out: Path, **options: Any) -> Path:
    request = ExportRequest(checkpoint=ckpt, precision=precision, output_stride=stride, out_dir=out, options={**PLAIN, **options})
    resolve(request)  # --max-drop: the sensitivity ranking, measured once
    return export_artifact(request, "openvino").folder


def nncf_models(
    fp32_folder: Path, meta: dict[str, Any], ptq_ckpt: Path, val: list[tuple[np.ndarray, np.ndarray]], drop: float, out: Path
) -> dict[str, Path]:
    """NNCF's plain PTQ and its accuracy control, from the FP32 IR, saved as IRs in `out`."""
    import nncf
    import openvino as ov

    out.mkdir(parents=True, exist_ok=True)
    found = {"nncf int8": out / "nncf_int8.xml", f"nncf ac {drop:g}": out / f"nncf_ac_{drop:g}.xml"}
    if all(p.is_file() for p in found.values()):
        return found
    calib, _ = calibration_images(load_checkpoint(ptq_ckpt), meta)
    model = ov.Core().read_model(str(fp32_folder / meta["model_file"]))
    dataset = nncf.Dataset(calib)
    names = meta["classes"]["names"]

    def validate(compiled: Any, items: Any) -> float:
        cm = ConfusionMatrix(len(names), 255)
        request = compiled.create_infer_request()
        for x, mask in items:
            request.infer({0: x})
            cm.update(np.asarray(request.get_output_tensor(0).data)[0].argmax(0), mask)
        return float(cm.summary(list(names))["miou"])

    plain = nncf.quantize(model, dataset, preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=len(calib))
    ov.save_model(plain, str(found["nncf int8"]), compress_to_fp16=False)
    controlled = nncf.quantize_with_accuracy_control(
        model,
        calibration_dataset=dataset,
        validation_dataset=nncf.Dataset(val),
        validation_fn=validate,
        max_drop=drop,
        drop_type=nncf.DropType.ABSOLUTE,
        preset=nncf.QuantizationPreset.PERFORMANCE,
        subset_size=len(calib),
    )
    ov.save_model(controlled, str(found[f"nncf ac {drop:g}"]), compress_to_fp16=False)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp32", type=Path)
    ap.add_argument("ptq", type=Path)
    ap.add_argument("--strides", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--max-drop", type=float, default=0.2)
    ap.add_argument("--max-class-drop", type=float, default=None, help="edgeseg: no class more than C IoU under FP32 either")
    ap.add_argument("--images", type=int, default=24, help="selection images (the first of val), for both methods")
    ap.add_argument(
        "--sensitivity",
        nargs="+",
        default=[],
        help="OS=FILE: edgeseg's ranking at that stride from 'edgeseg sensitivity --output-stride OS --json FILE' (default: measured)",
    )
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "accuracy_control")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rankings = {int(k): Path(v) for k, v in (item.split("=", 1) for item in args.sensitivity)}
    label = f"edgeseg drop {args.max_drop:g}" + (f" class {args.max_class_drop:g}" if args.max_class_drop is not None else "")
    table = []
    for stride in args.strides:
        out = args.out / f"os{stride}"
        fp32 = edgeseg_artifact(args.fp32, "fp32", stride, out)
        meta = json.loads((fp32 / "meta.json").read_text())
        d = meta["data"]
        source = open_source(d["format"], d.get("root"), "val", d.get("synthetic"))
        size = tuple(meta["input_size"])
        selection_images, _ = verification_images(meta, len(source))  # every val image, in order
        val = [(selection_images[i], source.load(i)[1]) for i in range(min(args.images, len(source)))]
        xmls = {"fp32": fp32 / meta["model_file"]}
        xmls["edgeseg int8"] = edgeseg_artifact(args.ptq, "int8", stride, out) / meta["model_file"]
        drop_folder = edgeseg_artifact(
            args.ptq, "int8", stride, out, max_drop=args.max_drop, max_class_drop=args.max_class_drop, sensitivity=rankings.get(stride)
        )
        xmls[label] = drop_folder / meta["model_file"]
        xmls.update(nncf_models(fp32, meta, args.ptq, val, args.max_drop, out / f"nncf_{len(val)}img"))  # per selection size
        compiled = {k: compile_ir(x, hint="f32") for k, x in xmls.items()}
        results: dict[str, dict[str, Any]] = {}
        held_out = HeldOut(source, len(val))
        for k, c in compiled.items():
            scored = {}
            for part, images in (("all", source), ("held_out", held_out))[: 2 if len(held_out) else 1]:
                scored[part] = evaluate_runner(
                    OpenVINORunner(c).run,
                    images,  # type: ignore[arg-type]
                    input_size=size,
                    mean=meta["normalization"]["mean"],
                    std=meta["normalization"]["std"],
                    names=meta["classes"]["names"],
                    ignore_index=source.classes.ignore_index,
                ).summary
            report = precision_report(c, hint="f32", int8=k != "fp32")
            results[k] = {
                "miou": scored["all"]["miou"],
                "per_class": scored["all"]["per_class_iou"],
                "held_out_miou": scored["held_out"]["miou"] if "held_out" in scored else None,
                "held_out_per_class": scored["held_out"]["per_class_iou"] if "held_out" in scored else {},
                "float_convs": len(report["fallbacks"]),
            }
            print(f"OS{stride} {k}: mIoU {scored['all']['miou']:.2f}, float convs {len(report['fallbacks'])}", flush=True)
        x = np.random.default_rng(0).standard_normal((1, 3, *size), dtype=np.float32)
        runners = {k: OpenVINORunner(c, copy=False) for k, c in compiled.items()}
        keys, medians = list(runners), {k: [] for k in runners}
        for r in range(args.rounds):
            for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
                runners[k].run(x)
                times = []
                for _ in range(args.runs):
                    t0 = time.perf_counter_ns()
                    runners[k].run(x)
                    times.append((time.perf_counter_ns() - t0) / 1e6)
                medians[k].append(float(np.median(times)))
        ref, ref_held = results["fp32"]["per_class"], results["fp32"]["held_out_per_class"]
        for k in keys:
            res = results[k]
            name, delta = worst_class(res["per_class"], ref) or (None, None)
            held_name, held_delta = worst_class(res["held_out_per_class"], ref_held) or (None, None)
            base = "edgeseg int8" if k.startswith("edgeseg") else "nncf int8" if k.startswith("nncf") else None
            table.append(
                {
                    "output_stride": stride,
                    "model": k,
                    "miou": res["miou"],
                    "delta_miou": res["miou"] - results["fp32"]["miou"],
                    "worst_class": name,
                    "worst_class_delta": delta,
                    "held_out_images": len(held_out),
                    "held_out_delta_miou": None
                    if res["held_out_miou"] is None
                    else res["held_out_miou"] - results["fp32"]["held_out_miou"],
                    "held_out_worst_class": held_name,
                    "held_out_worst_class_delta": held_delta,
                    "float_convs": res["float_convs"],
                    "p50_ms": float(np.median(medians[k])),
                    "spread_ms": [min(medians[k]), max(medians[k])],
                    "vs_full_int8": float(np.median(medians[k]) / np.median(medians[base])) if base else None,
                }
            )
        show(table, args.json)  # after each stride: a long run keeps what it measured


def show(table: list[dict[str, Any]], path: Path | None) -> None:
    print()
    print(
        "| OS | model | mIoU | Δ vs FP32 | worst class Δ IoU | held out: Δ mIoU, worst class | float convs "
        "| p50 ms (round spread) | latency vs its full INT8 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for t in table:
        cls = f"{t['worst_class']} {t['worst_class_delta']:+.2f}" if t["worst_class"] else "-"
        held = (
            "-"
            if t["held_out_delta_miou"] is None
            else f"{t['held_out_delta_miou']:+.2f}, "
            + (f"{t['held_out_worst_class']} {t['held_out_worst_class_delta']:+.2f}" if t["held_out_worst_class"] else "-")
        )
        ratio = f"{t['vs_full_int8']:.3f}x" if t["vs_full_int8"] else "-"
        print(
            f"| {t['output_stride']} | {t['model']} | {t['miou']:.2f} | {t['delta_miou']:+.2f} | {cls} | {held} | {t['float_convs']} | "
            f"{t['p50_ms']:.2f} ({t['spread_ms'][0]:.2f}-{t['spread_ms'][1]:.2f}) | {ratio} |"
        )
    if path:
        path.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
