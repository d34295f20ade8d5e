#!/usr/bin/env bash
# CamVid val mIoU of FP32, PTQ with each calibration method, and QAT, each INT8 figure measured by
# running the exported artifact (OpenVINO IR from the Q/DQ ONNX), not the torch simulation.
#   benchmarks/int8_accuracy.sh RUN_DIR [OS...]      e.g. benchmarks/int8_accuracy.sh runs/camvid 16 8 32
# OUT (default RUN_DIR/int8_table) receives the checkpoints, artifacts and results; EXPORT_ARGS are
# added to every INT8 export (e.g. EXPORT_ARGS=--exact-grid OUT=runs/camvid/int8_exact).
set -euo pipefail
RUN=${1:?usage: int8_accuracy.sh RUN_DIR [OS...]}; shift
STRIDES=${*:-16}
ES="${EDGESEG:-.venv/bin/edgeseg}"
OUT="${OUT:-$RUN/int8_table}"; mkdir -p "$OUT"
for method in max percentile entropy mse; do
  [ -f "$OUT/ptq_$method.pt" ] || $ES calibrate "$RUN/fp32.pt" --method "$method" --num-images 300 --out "$OUT/ptq_$method.pt"
done
for os in $STRIDES; do
  for src in fp32 ptq_max ptq_percentile ptq_entropy ptq_mse qat; do
    ckpt="$OUT/$src.pt"; [ "$src" = fp32 ] && ckpt="$RUN/fp32.pt"; [ "$src" = qat ] && ckpt="$RUN/qat.pt"
    prec=int8; [ "$src" = fp32 ] && prec=fp32
    dir="$OUT/export_$src"
    extra=${EXPORT_ARGS:-}; [ "$src" = fp32 ] && extra=
    # shellcheck disable=SC2086
    [ -f "$dir/openvino_${prec}_os$os/meta.json" ] || $ES export "$ckpt" --target openvino --precision "$prec" --output-stride "$os" --allow-fallback $extra --out "$dir"
    $ES bench "$dir/openvino_${prec}_os$os" --runs 5 --warmup 1 --json "$OUT/results_$src.json"
  done
done
.venv/bin/python - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
rows = []
for f in sorted(out.glob("results_*.json")):
    for r in json.loads(f.read_text())["rows"]:
        rows.append((r["output_stride"], f.stem.removeprefix("results_"), r["precision"], r["runtime"], r["miou"]))
print("| OS | model | precision | runtime | val mIoU |\n|---|---|---|---|---|")
for os_, name, prec, rt, miou in sorted(rows):
    print(f"| {os_} | {name} | {prec} | {rt} | {miou:.2f} |")
PY
