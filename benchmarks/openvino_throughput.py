"""OpenVINO on this CPU: FPS under the latency hint vs the throughput hint, side by side.

One artifact is loaded twice, compiled with PERFORMANCE_HINT LATENCY and THROUGHPUT, and benched
interleaved in one run (edgeseg.bench.bench_interleaved: every round times both, so a background
load slows both alike):

    latency     FPS of single synchronous calls, one after another (what `edgeseg bench` reports
                by default)
    throughput  FPS at full load: an AsyncInferQueue of OPTIMAL_NUMBER_OF_INFER_REQUESTS requests
                (read back from the compiled model) kept busy over as many inferences as the
                latency row times (what `edgeseg bench --hint throughput` reports); its latency
                columns are still single synchronous calls, on the throughput-compiled model

The table gives both rows and the ratio of their FPS (throughput / latency). The rows are also
written to --json, so `edgeseg report` can show them.

    nice -n 15 .venv/bin/python benchmarks/openvino_throughput.py [ARTIFACT] [--rounds 6 --runs 60]

ARTIFACT is an OpenVINO artifact folder written by `edgeseg export --target openvino`. Without
it, a DeepLabV3+ MobileNetV2 (random weights, 11 classes, --width, --size) is exported to an FP32
IR in a temporary folder (that needs torch); latency does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeseg.bench import BenchOptions, BenchRow, bench_interleaved  # noqa: E402
from edgeseg.bench.device import usable_cores  # noqa: E402
from edgeseg.sizes import parse_size  # noqa: E402


def build_artifact(out: Path, size: tuple[int, int], width: float) -> Path:
    """An FP32 OpenVINO artifact (IR + meta.json) of a random DeepLabV3+ MobileNetV2."""
    import torch

    from edgeseg.data.classes import CAMVID
    from edgeseg.export.onnx_export import export_onnx
    from edgeseg.export.openvino_ir import ir_from_onnx
    from edgeseg.models import build_model

    torch.manual_seed(0)
    model = build_model(num_classes=len(CAMVID.names), output_stride=16, width_mult=width).eval()
    folder = out / "openvino_fp32"
    folder.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model, out / "model.onnx", input_size=size, meta={"name": "throughput-bench"})
    ir_from_onnx(out / "model.onnx", folder, precision="fp32")
    meta = {
        "schema_version": 1, "target": "openvino", "precision": "fp32", "model_file": "model.xml",
        "input_name": "input", "output_name": "logits", "input_size": list(size), "output_stride": 16,
        "classes": CAMVID.to_dict(), "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "data": {"format": "camvid", "root": None, "split": "val"}, "quant": None, "source_checkpoint": None,
        "source_checkpoint_sha256": None, "recipe_hash": None, "tool_versions": {}, "precision_hint": "f32", "device": "CPU",
    }  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    return folder


def table(rows: list[BenchRow]) -> str:
    head = f"{'hint':<11} {'requests':>8} {'p50 ms':>8} {'p90 ms':>8} {'round p50 min-max ms':>21} {'FPS':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        spread = f"{min(r.round_p50_ms or [0]):.2f}-{max(r.round_p50_ms or [0]):.2f}"
        requests = r.infer_requests or 1
        lines.append(f"{r.perf_hint:<11} {requests:>8} {r.latency['p50']:>8.2f} {r.latency['p90']:>8.2f} {spread:>21} {r.throughput:>8.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", nargs="?", type=Path, help="OpenVINO artifact folder (default: build a random FP32 one)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--runs", type=int, default=60, help="timed inferences per hint (synchronous, and at full load)")
    parser.add_argument("--warmup", type=int, default=6)
    parser.add_argument("--size", default="256x256", help="HxW of the built model")
    parser.add_argument("--width", type=float, default=1.0, help="MobileNetV2 width of the built model")
    parser.add_argument("--json", type=Path, help="results file (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        artifact = args.artifact or build_artifact(Path(tmp), parse_size(args.size), args.width)
        options = [
            BenchOptions(runs=args.runs, warmup=args.warmup, accuracy=False, device="CPU", perf_hint=hint)
            for hint in ("latency", "throughput")
        ]
        results = args.json or Path(tmp) / "results.json"
        rows = bench_interleaved(results, [artifact, artifact], options, args.rounds)
    device = rows[0].device
    what = artifact if args.artifact else f"random DeepLabV3+ MobileNetV2 x{args.width}"
    print(f"{what} ({rows[0].precision}, input {'x'.join(map(str, rows[0].input_shape))})")
    print(f"OpenVINO {rows[0].runtime_version} on {device.get('cpu')} ({usable_cores()} usable cores), {args.rounds} interleaved rounds")
    print(table(rows))
    latency, throughput = rows
    print(f"throughput / latency FPS: {throughput.throughput / latency.throughput:.2f}x")


if __name__ == "__main__":
    main()
