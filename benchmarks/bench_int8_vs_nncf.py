"""OpenVINO CPU latency: edgeseg's INT8 Q/DQ ONNX vs NNCF's own PTQ vs torch eager FP32.

Side by side in one run, at output strides 8/16/32, with the same float model and the same
calibration images for both INT8 models:

    edgeseg int8   quantize() + export_onnx() -> the IR `edgeseg export --target openvino` writes
                   (ir_from_onnx: non-negative activations lowered to u8 over the same ranges)
    edgeseg exact  the same Q/DQ ONNX read as it is (--exact-grid: TensorRT's signed grid, bit
                   for bit), to show what the u8 lowering gains
    nncf int8      the float ONNX -> OpenVINO -> nncf.quantize() (the route Ultralytics uses)
    nncf again     the same NNCF IR compiled a second time: nncf-again/nncf is the noise floor of
                   the edgeseg/nncf ratio on this machine (two identical graphs)
    ov fp32        the float ONNX -> OpenVINO (f32 inference precision hint)
    torch fp32     eager PyTorch

All run with 2 threads; OpenVINO with the f32 inference precision hint (so nothing silently
runs in bf16) and the LATENCY hint. Each round times one inference of every model, in a shuffled
order (interleaved), so a background load slows all of them alike; the table gives wall-clock
medians and minima, and the process CPU time per inference, which a busy machine disturbs
least. `--explain` prints what the CPU plugin runs: convolutions per runtime precision and the
Reorder/Convert layers it inserted (the cost of a poor quantizer placement).

    nice -n 15 .venv/bin/python benchmarks/bench_int8_vs_nncf.py [--checkpoint CKPT] [--explain]

Without --checkpoint the model is DeepLabV3+ MobileNetV2 with the ImageNet backbone
(../shared/weights) and a random head, 11 classes, at 360x480, calibrated on images of
calib/camvid_train_300.txt (../shared/data/camvid): no trained model is needed.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = ROOT / ".." / "shared"

from edgeseg.constants import CALIB_METHODS, OUTPUT_STRIDES  # noqa: E402
from edgeseg.data.calib import read_calib_list  # noqa: E402
from edgeseg.data.io import read_image  # noqa: E402
from edgeseg.data.preprocess import preprocess  # noqa: E402
from edgeseg.export.onnx_export import export_onnx  # noqa: E402
from edgeseg.export.openvino_ir import ir_from_onnx  # noqa: E402
from edgeseg.models import build_model  # noqa: E402
from edgeseg.quant import quantize  # noqa: E402
from edgeseg.sizes import parse_size  # noqa: E402


def float_model(args: argparse.Namespace) -> torch.nn.Module:
    if args.checkpoint:
        from edgeseg.train.checkpoint import load_checkpoint, model_from_checkpoint

        ckpt = load_checkpoint(args.checkpoint)
        if ckpt.get("quant"):
            sys.exit(f"{args.checkpoint} is quantized; pass its FP32 checkpoint")
        return model_from_checkpoint(ckpt).eval()
    torch.manual_seed(0)
    weights = SHARED / "weights" / "mobilenet_v2_imagenet.pth"
    return build_model(num_classes=11, output_stride=16, backbone_weights=weights).eval()


def calibration_images(args: argparse.Namespace, size: tuple[int, int]) -> list[np.ndarray]:
    paths = read_calib_list(args.calib, args.data_root, limit=args.num_calib)
    return [preprocess(read_image(p), size) for p in paths]


def compile_ov(model: Any, threads: int) -> Any:
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
    return ov.Core().compile_model(model, "CPU", config)


def explain(compiled: Any) -> dict[str, Any]:
    """Convolutions by runtime precision and the Reorder/Convert layers of a compiled model."""
    convs: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind = str(info["layerType"].astype(str)) if "layerType" in info else op.get_type_name()
        layers[kind] += 1
        if kind == "Convolution":
            convs[str(info["runtimePrecision"].astype(str)) if "runtimePrecision" in info else "?"] += 1
    return {
        "conv_precisions": dict(convs),
        "reorders": layers["Reorder"],
        "converts": layers["Convert"],
        "subgraphs": layers["Subgraph"],
        "eltwise": layers["Eltwise"],
        "layers": sum(layers.values()),
    }


def build_variants(model: torch.nn.Module, os_: int, images: list[np.ndarray], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Compiled OpenVINO models (edgeseg int8, nncf int8, ov fp32) and the torch fp32 model at one OS."""
    import nncf
    import openvino as ov

    size = images[0].shape[-2:]
    model.set_output_stride(os_)
    model.set_input_size(size)

    def loop(m: torch.nn.Module) -> None:
        with torch.no_grad():
            for x in images:
                m(torch.from_numpy(x))

    tick = time.perf_counter()
    qmodel = quantize(model, {"method": args.method}, loop)
    export_onnx(qmodel, tmp / f"edgeseg_os{os_}.onnx", input_size=size, meta={"bench": "int8"})
    export_onnx(model, tmp / f"fp32_os{os_}.onnx", input_size=size, meta={"bench": "fp32"})
    logging.info("OS%d: edgeseg calibration + exports %.0fs", os_, time.perf_counter() - tick)
    tick = time.perf_counter()
    fp32_ov = ov.convert_model(str(tmp / f"fp32_os{os_}.onnx"))
    nncf_ov = nncf.quantize(fp32_ov, nncf.Dataset(images), subset_size=len(images))
    ov.save_model(nncf_ov, str(tmp / f"nncf_os{os_}.xml"), compress_to_fp16=False)
    logging.info("OS%d: nncf.quantize %.0fs", os_, time.perf_counter() - tick)
    shipped = tmp / f"edgeseg_os{os_}"
    shipped.mkdir(exist_ok=True)
    xml, lowered = ir_from_onnx(tmp / f"edgeseg_os{os_}.onnx", shipped, precision="int8")
    logging.info("OS%d: %d quantizers of non-negative tensors lowered to u8", os_, lowered)
    return {
        "edgeseg int8": compile_ov(str(xml), args.threads),
        "edgeseg exact": compile_ov(ov.convert_model(str(tmp / f"edgeseg_os{os_}.onnx")), args.threads),
        "nncf int8": compile_ov(nncf_ov, args.threads),
        "nncf again": compile_ov(str(tmp / f"nncf_os{os_}.xml"), args.threads),
        "ov fp32": compile_ov(ov.convert_model(str(tmp / f"fp32_os{os_}.onnx")), args.threads),
        "torch fp32": model,
    }


def time_interleaved(
    variants: dict[str, Any], x: np.ndarray, runs: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Wall and process-CPU milliseconds per inference of each variant, one of each per round.

    CPU time (all threads of this process) does not grow while the process waits for a core,
    so on a machine shared with other work it is the steadier measure of the work done.
    """
    xt = torch.from_numpy(x)

    def once(v: Any) -> None:
        if isinstance(v, torch.nn.Module):
            with torch.no_grad():
                v(xt)
        else:
            v(x)

    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    order, rng = list(variants), random.Random(0)
    for i in range(warmup + runs):
        rng.shuffle(order)  # no variant always runs right after torch (whose idle threads still spin)
        for name in order:
            v = variants[name]
            tick, cpu_tick = time.perf_counter(), time.process_time()
            once(v)
            if i >= warmup:
                times[name].append((time.perf_counter() - tick) * 1e3)
                cpu[name].append((time.process_time() - cpu_tick) * 1e3)
    return times, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, help="FP32 checkpoint (default: ImageNet backbone + random head)")
    p.add_argument("--calib", type=Path, default=ROOT / "calib" / "camvid_train_300.txt")
    p.add_argument("--data-root", type=Path, default=SHARED / "data" / "camvid")
    p.add_argument("--num-calib", type=int, default=32, help="calibration images (same for edgeseg and NNCF)")
    p.add_argument("--method", default="percentile", choices=CALIB_METHODS)
    p.add_argument("--size", default="360x480")
    p.add_argument("--strides", type=int, nargs="+", default=list(OUTPUT_STRIDES), choices=OUTPUT_STRIDES)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--explain", action="store_true", help="print the runtime precision of every variant's convolutions")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--keep", type=Path, help="keep the ONNX files and the NNCF IR in this folder")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in ("nncf", "openvino"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    size = parse_size(args.size)
    images = calibration_images(args, size)
    model = float_model(args)
    x = images[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for os_ in args.strides:
            variants = build_variants(model, os_, images, args, folder)
            if args.explain:
                for name, v in variants.items():
                    if name != "torch fp32":
                        print(f"OS{os_} {name}: {json.dumps(explain(v))}")
            times, cpu = time_interleaved(variants, x, args.runs, args.warmup)
            rows.append(
                {
                    "output_stride": os_,
                    "cpu_median_ms": {k: statistics.median(v) for k, v in cpu.items()},
                    "min_ms": {k: min(v) for k, v in times.items()},
                    "median_ms": {k: statistics.median(v) for k, v in times.items()},
                    "p90_ms": {k: float(np.percentile(v, 90)) for k, v in times.items()},
                }
            )
            print_table(rows[-1:], args)
    print_table(rows, args)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2))


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """Median and minimum per variant; the minimum is the robust figure on a loaded machine (noise only adds)."""
    print(f"\nOpenVINO CPU, {args.threads} threads, input {args.size}, batch 1, {args.runs} interleaved runs: median (min) ms")
    names = ("edgeseg int8", "edgeseg exact", "nncf int8", "nncf again", "ov fp32", "torch fp32")
    ratios = ("edgeseg/nncf", "exact/nncf", "again/nncf", "torch/edgeseg")

    def ratio_cells(t: dict[str, float]) -> list[float]:
        nncf = t["nncf int8"]
        return [t["edgeseg int8"] / nncf, t["edgeseg exact"] / nncf, t["nncf again"] / nncf, t["torch fp32"] / t["edgeseg int8"]]

    print(f"{'OS':>3} " + " ".join(f"{n:>18}" for n in names) + " " + " ".join(f"{n:>15}" for n in ratios))
    for r in rows:
        med, low = r["median_ms"], r["min_ms"]
        cells = " ".join(f"{med[n]:>9.1f} ({low[n]:>6.1f})" for n in names)
        rcells = " ".join(f"{a:>6.2f}x ({b:.2f}x)" for a, b in zip(ratio_cells(med), ratio_cells(low), strict=True))
        print(f"{r['output_stride']:>3} {cells} {rcells}")
    print(f"process CPU time per inference (all threads), median ms; ratios {', '.join(ratios)}")
    for r in rows:
        c = r["cpu_median_ms"]
        cells = " ".join(f"{c[n]:>18.1f}" for n in names)
        print(f"{r['output_stride']:>3} {cells} " + " ".join(f"{v:>14.2f}x" for v in ratio_cells(c)))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
