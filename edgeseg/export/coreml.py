"""Core ML target: an .mlpackage (ML program, iOS 17 / macOS 14) that takes pixels.

FP32 and FP16 convert the float model (compute_precision FLOAT32 / FLOAT16). INT8 is W8A8 with
the ranges of the calibrated or QAT checkpoint itself, not a new calibration (coremltools'
activation calibration needs macOS): the fake-quant model is traced with torch's
quantize/dequantize ops, which coremltools turns into int8 weights (constexpr_affine_dequantize)
and activation quantize/dequantize ops.

Input: an RGB image (ct.ImageType, scale 1/255). ImageType has one scale for all channels, so
the per-channel ImageNet mean/std cannot be folded into it; the traced wrapper starts with a
tiny (x - mean) / std layer instead, and Vision/Core ML callers pass plain pixels. Output:
"logits" (1, C, H, W) float32, or with `--output labels` "labels" (1, H, W) int32, the class map
of an argmax inside the model (reduce_argmax; int32 is what it gives). Class names, colours and
the artifact meta are in the model's user-defined metadata.

Converting and inspecting run anywhere; prediction needs macOS (Core ML framework).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import platform
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import ConfigError, TargetError, missing_dependency
from edgeseg.export.base import ExportRequest, Loaded, package_version

MODEL_FILE = "model.mlpackage"
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
LABELS_NAME = "labels"
DEPLOYMENT_TARGET = "iOS17"  # = macOS 14
WEIGHT_DEQUANT_OPS = {"constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"}
VALUE_COPY_OPS = {"concat", "tile", "reshape", "transpose", "squeeze", "expand_dims", "slice_by_index"}


def _ct() -> Any:
    try:
        import coremltools
    except ImportError:
        raise missing_dependency("coremltools", "coreml") from None
    return coremltools


def qdq_view(model: Any) -> Any:
    """A copy of a fake-quant model whose quantizers use torch.quantize_per_* + dequantize.

    Fake quantization and quantize->dequantize compute the same values (same scale, zero point
    0, rounding and [-128, 127] clamp); only the traced ops differ, and coremltools converts
    these (not fake_quantize_*) to Core ML's int8 weights and quantize/dequantize ops.
    """
    import torch
    from torch import nn

    from edgeseg.quant import QuantConv2d, TensorQuantizer, int8_scale

    class QDQActivation(nn.Module):
        def __init__(self, amax: torch.Tensor, enabled: bool) -> None:
            super().__init__()
            self.scale = float(int8_scale(amax))
            self.enabled = enabled

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.dequantize(torch.quantize_per_tensor(x, self.scale, 0, torch.qint8)) if self.enabled else x

    class QDQConv(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scale = int8_scale(self.weight.detach().abs().amax(dim=(1, 2, 3)))
            zero = torch.zeros(scale.numel(), dtype=torch.int64)
            w = torch.dequantize(torch.quantize_per_channel(self.weight.detach(), scale, zero, 0, torch.qint8))
            return self._conv_forward(x, w, self.bias)

    out = copy.deepcopy(model)
    for parent in list(out.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, TensorQuantizer):
                parent._modules[name] = QDQActivation(child.amax, child.mode == "quant")
            elif isinstance(child, QuantConv2d):
                cls = QDQConv if child.quant_weight else nn.Conv2d
                conv = cls(
                    child.in_channels,
                    child.out_channels,
                    child.kernel_size,
                    child.stride,
                    child.padding,  # type: ignore[arg-type]
                    child.dilation,
                    child.groups,
                    child.bias is not None,
                )  # type: ignore[arg-type]
                conv.weight, conv.bias = child.weight, child.bias
                parent._modules[name] = conv
    return out


def pixel_model(model: Any, mean: list[float], std: list[float], labels: bool = False) -> Any:
    """Wrap `model` so it takes pixels in [0, 1] (ImageType scale 1/255) and normalises them;
    `labels`: and gives the class map (argmax over the classes, int32) instead of the logits."""
    import torch
    from torch import nn

    class Normalize(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
            self.register_buffer("inv_std", 1.0 / torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = self.model((x - self.mean) * self.inv_std)
            return logits.argmax(1).to(torch.int32) if labels else logits

    return Normalize().eval()


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """coremltools draws tqdm bars on sys.stderr; the CLI shows its own progress.

    Only Python-level writes to sys.stderr are captured; logging handlers keep their stream.
    """
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def convert(model: Any, *, precision: str, input_size: tuple[int, int], meta: dict[str, Any], labels: bool = False) -> Any:
    """Trace and convert an eval-mode model (fake-quant for int8) to a Core ML ML program
    (`labels`: with the class map as its output)."""
    ct = _ct()
    import torch

    if precision == "int8":
        model = qdq_view(model)
    norm = meta["normalization"]
    wrapped = pixel_model(model, list(norm["mean"]), list(norm["std"]), labels)
    h, w = input_size
    example = torch.rand(1, 3, h, w)
    with torch.no_grad():
        traced = torch.jit.trace(wrapped, example, check_trace=False)
    compute = ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
    with _quiet_progress():
        mlmodel = ct.convert(
            traced,
            inputs=[ct.ImageType(name=INPUT_NAME, shape=(1, 3, h, w), scale=1 / 255.0, color_layout=ct.colorlayout.RGB)],
            outputs=[ct.TensorType(name=LABELS_NAME, dtype=np.int32) if labels else ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, DEPLOYMENT_TARGET),
            compute_precision=compute,
        )
    _describe(mlmodel, meta, precision, labels)
    return mlmodel


def _describe(mlmodel: Any, meta: dict[str, Any], precision: str, labels: bool = False) -> None:
    classes = meta["classes"]
    mlmodel.short_description = (
        f"DeepLabV3+ MobileNetV2 segmentation, {len(classes['names'])} classes, OS{meta['output_stride']}, {precision} (edgeseg)"
    )
    mlmodel.input_description[INPUT_NAME] = (
        f"RGB image {meta['input_size'][1]}x{meta['input_size'][0]}, pixels 0-255 (normalisation is inside the model)"
    )
    if labels:
        mlmodel.output_description[LABELS_NAME] = "class map (1, H, W), int32 class indices (argmax inside the model)"
    else:
        mlmodel.output_description[OUTPUT_NAME] = "class logits (1, C, H, W); argmax over C gives the class map"
    ud = mlmodel.user_defined_metadata
    ud["edgeseg.classes"] = json.dumps(classes["names"])
    ud["edgeseg.colors"] = json.dumps(classes["colors"])
    ud["edgeseg.precision"] = precision
    ud["edgeseg.output_stride"] = str(meta["output_stride"])
    ud["edgeseg.normalization"] = json.dumps(meta["normalization"])


def inspect_mlpackage(path: str | Path) -> dict[str, Any]:
    """Read an .mlpackage's spec from disk: I/O, op counts, int8 conv weights/inputs, metadata."""
    ct = _ct()
    from coremltools.proto import MIL_pb2

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    inputs = {}
    for i in spec.description.input:
        kind = i.type.WhichOneof("Type")
        img = i.type.imageType
        inputs[i.name] = {"type": kind, "height": img.height, "width": img.width} if kind == "imageType" else {"type": kind}
    outputs = {
        o.name: {
            "shape": list(o.type.multiArrayType.shape),
            "dtype": ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(o.type.multiArrayType.dataType),
        }
        for o in spec.description.output
    }
    fn = spec.mlProgram.functions["main"]
    ops = list(fn.block_specializations[fn.opset].operations)
    producer = {out.name: op for op in ops for out in op.outputs}
    convs = [op for op in ops if op.type == "conv"]

    def source(op: Any, arg: str) -> Any:
        args = op.inputs[arg].arguments if arg in op.inputs else []
        return producer.get(args[0].name) if args else None

    def int8_weight(op: Any) -> bool:
        src = source(op, "weight")
        if src is None or src.type not in WEIGHT_DEQUANT_OPS:
            return False
        data = src.attributes.get("quantized_data") or src.attributes.get("data")
        return data is not None and MIL_pb2.DataType.Name(data.type.tensorType.dataType) == "INT8"

    def int8_valued(name: str) -> bool:
        # Dequantized int8, possibly moved by ops that copy values (coremltools drops the Q/DQ
        # pair after a concat of same-scale inputs, which that pair made redundant).
        op = producer.get(name)
        if op is None or op.type not in VALUE_COPY_OPS | {"dequantize"}:
            return False
        args = [a.name for key in ("x", "values") if key in op.inputs for a in op.inputs[key].arguments]
        return op.type == "dequantize" or (bool(args) and all(int8_valued(a) for a in args))

    def int8_input(op: Any) -> bool:
        args = op.inputs["x"].arguments if "x" in op.inputs else []
        return bool(args) and int8_valued(args[0].name)

    # adds of two computed tensors (residuals), in program order
    adds = [[a.name for k in ("x", "y") for a in op.inputs[k].arguments] for op in ops if op.type == "add"]
    adds = [args for args in adds if len(args) == 2 and all(a in producer and producer[a].type != "const" for a in args)]

    def weight_shape(op: Any) -> tuple[int, ...]:
        src = source(op, "weight")
        return tuple(int(d.constant.size) for d in src.outputs[0].type.tensorType.dimensions) if src is not None else ()

    def argmax(op: Any) -> tuple[int, int]:
        """(axis, size of that axis of its input) of a reduce_argmax."""
        axis = int(producer[op.inputs["axis"].arguments[0].name].attributes["val"].immediateValue.tensor.ints.values[0])
        source = producer.get(op.inputs["x"].arguments[0].name)
        shape: list[Any] = list(source.outputs[0].type.tensorType.dimensions) if source is not None else []
        return axis, int(shape[axis].constant.size) if len(shape) > axis else -1

    return {
        "spec_version": spec.specificationVersion,
        "argmax": [argmax(op) for op in ops if op.type == "reduce_argmax"],
        "opset": fn.opset,
        "inputs": inputs,
        "outputs": outputs,
        "ops": dict(Counter(op.type for op in ops)),
        "convs": len(convs),
        "convs_int8_weights": sum(int8_weight(op) for op in convs),
        "convs_int8_inputs": sum(int8_input(op) for op in convs),
        # per conv, in program order: (int8 weights, int8 input, weight shape), for layers kept float
        "conv_states": [(int8_weight(op), int8_input(op), weight_shape(op)) for op in convs],
        "add_states": [tuple(int8_valued(a) for a in args) for args in adds],
        "metadata": dict(spec.description.metadata.userDefined),
    }


def int8_weights_only(mlmodel: Any) -> Any:
    """W8: every weight (conv kernels included, however small) to int8, symmetric per output
    channel (coremltools' linear_quantize_weights); activations stay FP16. Weights only need no
    calibration, so this runs on any OS."""
    _ct()
    from coremltools.optimize.coreml import OpLinearQuantizerConfig, OptimizationConfig, linear_quantize_weights

    config = OptimizationConfig(
        global_config=OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=1)
    )
    with _quiet_progress():
        return linear_quantize_weights(mlmodel, config)


def verify_mlpackage(path: Path, meta: dict[str, Any], precision: str, plan: Any = None, labels: bool = False) -> dict[str, Any]:
    """Check names, shapes, metadata, and (INT8) that every conv has int8 weights and inputs, or
    with a `plan` (layers kept float, edgeseg.export.mixed) exactly those it says, matched by order;
    `labels`: a class-map output (int32, 1 x H x W) made by an argmax over the logits' class axis."""
    info = inspect_mlpackage(path)
    h, w = meta["input_size"]
    n = len(meta["classes"]["names"])
    img = info["inputs"].get(INPUT_NAME, {})
    problems = []
    if img.get("type") != "imageType" or (img.get("height"), img.get("width")) != (h, w):
        problems.append(f"input '{INPUT_NAME}' is {img or 'missing'}, expected an {w}x{h} image")
    name, want, dtype = (LABELS_NAME, [1, h, w], "INT32") if labels else (OUTPUT_NAME, [1, n, h, w], "FLOAT32")
    out = info["outputs"].get(name, {})
    if out.get("shape") != want or out.get("dtype") != dtype:
        problems.append(f"output '{name}' is {out or 'missing'}, expected {dtype} of shape {want}")
    if labels and info["argmax"] != [(1, n)]:
        problems.append(f"the class map is not one argmax over the {n} classes (axis 1): found {info['argmax']}")
    if json.loads(info["metadata"].get("edgeseg.classes", "[]")) != meta["classes"]["names"]:
        problems.append("class names are missing from the metadata")
    if plan is not None:
        from edgeseg.export.mixed_verify import ordered_problems, summary

        found = ordered_problems(info["conv_states"], info["add_states"], plan)
        problems += [f"its float layers differ from meta.json: {summary(found)}"] if found else []
    elif precision == "int8" and not info["convs"] == info["convs_int8_weights"] == info["convs_int8_inputs"]:
        problems.append(
            f"of {info['convs']} convs, {info['convs_int8_weights']} have int8 weights and {info['convs_int8_inputs']} int8 inputs"
        )
    elif precision == "w8" and not (info["convs"] == info["convs_int8_weights"] and info["convs_int8_inputs"] == 0):
        problems.append(
            f"of {info['convs']} convs, {info['convs_int8_weights']} have int8 weights and {info['convs_int8_inputs']} int8 inputs "
            "(W8: every weight int8, every input FP16)"
        )
    if problems:
        raise TargetError(f"Core ML package '{path}' failed verification: {'; '.join(problems)}; run with --verbose")
    return info


# `bench --compute-units`: coremltools' ct.ComputeUnit members, in lower case. Which engines run
# the model; INT8 activations (W8A8) speed up only the Neural Engine of A17 Pro / M4 and later.
COMPUTE_UNITS = ("all", "cpu_and_ne", "cpu_and_gpu", "cpu_only")


def check_compute_units(units: str) -> str:
    if units not in COMPUTE_UNITS:
        raise ConfigError(f"--compute-units '{units}' is not a Core ML compute unit; use one of {', '.join(COMPUTE_UNITS)}")
    return units


class CoreMLRunner:
    """A Core ML model (prediction on macOS only): `run(x)` takes normalised NCHW like the other runners.

    `run` = `run_prepared(prepare(x))`: `prepare` turns the normalised array back into the PIL
    images the model takes, so bench times that conversion as pre-processing and only the
    prediction as the model. `compute_units` picks the engines (ct.ComputeUnit, lower case).
    """

    def __init__(self, path: Path, meta: dict[str, Any], compute_units: str = "all") -> None:
        ct = _ct()
        self.output = str(meta.get("output_name") or OUTPUT_NAME)  # logits, or labels (int32 class map)
        self.compute_units = check_compute_units(compute_units)
        self.model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, compute_units.upper()))
        norm = meta["normalization"]
        self.mean = np.asarray(norm["mean"], np.float32).reshape(1, 3, 1, 1)
        self.std = np.asarray(norm["std"], np.float32).reshape(1, 3, 1, 1)
        self.static_batch = 1

    def prepare(self, x: np.ndarray) -> list[Any]:
        """Normalised NCHW -> one RGB PIL image per item (exact up to rounding for inputs made
        from uint8 pixels)."""
        from PIL import Image

        pixels = np.clip(np.rint((x * self.std + self.mean) * 255.0), 0, 255).astype(np.uint8)
        return [Image.fromarray(np.ascontiguousarray(p.transpose(1, 2, 0))) for p in pixels]

    def run_prepared(self, images: list[Any]) -> np.ndarray:
        outs = [np.asarray(self.model.predict({INPUT_NAME: image})[self.output]) for image in images]
        if self.output == LABELS_NAME:
            return np.concatenate([o.astype(np.int32, copy=False).reshape(1, *o.shape[-2:]) for o in outs])
        return np.concatenate([o.astype(np.float32, copy=False) for o in outs])

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.run_prepared(self.prepare(x))


def is_macos() -> bool:
    return platform.system() == "Darwin"


class CoreMLTarget:
    """The Target protocol for Core ML (see edgeseg.export.base)."""

    name = "coreml"
    runtime = "coreml"
    runtime_label = "Core ML"
    extra = "coreml"
    precisions = ("fp32", "fp16", "int8", "w8")
    variants: tuple[tuple[str, str | None], ...] = (("fp16", None), ("w8", None), ("int8", None))
    precision_hints: tuple[str, ...] = ()
    bench_options = {"compute_units": COMPUTE_UNITS}
    # The model takes an RGB image (ct.ImageType) whatever is asked; edgeseg's runner feeds it from
    # normalised tensors, so its io is "tensor". --output labels puts the argmax in the model.
    io_defaults = ("tensor", "logits")
    io_inputs = ("tensor",)
    labels_dtype = "int32"
    io_in_export = True

    def is_available(self) -> tuple[bool, str]:
        try:
            _ct()
        except Exception as exc:  # noqa: BLE001 - any import failure means "not here"
            return False, str(exc)
        return True, ""

    def export(self, request: ExportRequest, out: Path) -> dict[str, Any]:
        return export_coreml(request, out)

    def can_run_here(self) -> tuple[bool, str]:
        if not is_macos():
            return False, "Core ML prediction needs macOS"
        if package_version("coremltools") is None:
            return False, str(missing_dependency("coremltools", "coreml"))
        return True, ""

    def describe(self, meta: dict[str, Any], folder: Path | None) -> str:
        c = meta.get("coreml", {})
        return f"Core ML spec checked: {c.get('convs_int8_weights')}/{c.get('convs')} convs with int8 weights; prediction needs macOS"

    def load(
        self,
        artifact: Path,
        meta: dict[str, Any],
        *,
        threads: int | None = None,
        precision_hint: str | None = None,
        compute_units: str | None = None,
    ) -> Loaded:
        """Load with ct.models.MLModel(compute_units=...) (default all); the row's provider names them."""
        units = check_compute_units(compute_units or "all")
        if not is_macos():
            raise TargetError(f"Core ML prediction needs macOS; copy '{artifact}' to a Mac (macOS 14+) and bench it there")
        runner = CoreMLRunner(Path(artifact) / meta["model_file"], meta, units)
        return Loaded(runner, self.runtime, package_version("coremltools"), f"Core ML ({units} compute units)", None, runner.static_batch)


def export_coreml(request: ExportRequest, out: Path) -> dict[str, Any]:
    """Convert the checkpoint of `request` to out/model.mlpackage, verify it, return meta."""
    from edgeseg.export.common import float_model_of
    from edgeseg.export.prepare import load_for_export, tool_versions
    from edgeseg.quant import is_quantized

    if request.dynamic_batch:
        raise ConfigError("--dynamic-batch is not supported for Core ML (batch 1 image input); leave it out")
    if request.options.get("ptq"):
        raise ConfigError("--ptq applies to OpenVINO only; Core ML INT8 uses the checkpoint's own ranges")
    model, ckpt, meta = load_for_export(request)
    if request.precision == "int8" and not is_quantized(model):
        raise TargetError(f"checkpoint '{request.checkpoint}' has no INT8 ranges; calibrate it ('edgeseg calibrate') or train with QAT")
    from edgeseg.export.io_wrap import resolve_io

    io = resolve_io(TARGET, request.options)
    labels = io.output == "labels"
    source = model if request.precision == "int8" else float_model_of(model)
    w8 = request.precision == "w8"  # the FP16 model, then its weights to int8
    precision = "fp16" if w8 else request.precision
    mlmodel = convert(source, precision=precision, input_size=tuple(meta["input_size"]), meta=meta, labels=labels)
    if w8:
        mlmodel = int8_weights_only(mlmodel)
    path = out / MODEL_FILE
    mlmodel.save(str(path))
    from edgeseg.export.mixed import plan_of

    info = verify_mlpackage(path, meta, request.precision, plan_of(model), labels)
    meta["io"] = {
        **io.as_meta(),
        "verification": {"reference": "Core ML spec: one reduce_argmax over the class axis, INT32 1 x H x W", "agreement": None},
    } if labels else io.as_meta()  # fmt: skip
    meta.update(
        {
            "target": "coreml",
            "precision": request.precision,
            "model_file": MODEL_FILE,
            "input_name": INPUT_NAME,
            "output_name": LABELS_NAME if labels else OUTPUT_NAME,
            "tool_versions": tool_versions("torch", "coremltools"),
            "coreml": {
                "minimum_deployment_target": f"{DEPLOYMENT_TARGET} / macOS14",
                "input": "RGB image, pixels 0-255, normalisation inside",
                "compute_precision": "float32" if request.precision == "fp32" else "float16",
                "weights": "int8 (per channel)" if request.precision in ("int8", "w8") else "float",
                "activations": "int8 (the checkpoint's ranges)" if request.precision == "int8" else "float",
                "convs": info["convs"],
                "convs_int8_weights": info["convs_int8_weights"],
                "convs_int8_inputs": info["convs_int8_inputs"],
                "prediction_verified": False,
                "why": "Core ML prediction needs macOS; bench on a Mac checks accuracy",
            },
        }
    )
    if request.precision != "int8":
        meta["quant"] = None
    return meta


TARGET = CoreMLTarget()
