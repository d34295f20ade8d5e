"""`export --input image|tensor --output labels|logits`: the pre- and post-processing inside the model.

A target first exports and verifies its core model (normalised float tensor in, float logits out)
as before. Unless tensor->logits was asked for, the core is then wrapped:

- input "image": uint8 pixels at the input size; the graph casts them to float and normalises
  them, (x - 255 mean) / (255 std) per channel, which is the eval transform's (x / 255 - mean) / std
  (OpenVINO: its PrePostProcessor, which also takes NHWC, the layout a decoded frame has).
- output "labels": an argmax over the classes at the end of the graph, a class map N x H x W at the
  input resolution, uint8 (int32 where the runtime has no uint8 output: TensorRT's ArgMax gives
  int32), instead of 11 float logits per pixel.

The wrapped model is checked against the core it wraps on real images (edgeseg.export.common
.verification_frames): the share of pixels whose class is the same must reach IO_AGREEMENT, and
the figure goes into meta.json's "io". Only the normalisation's rounding differs, so anything
below the gate is a wrong mean, scale, layout or axis.

Export side: onnx and OpenVINO are imported inside the functions that use them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import ConfigError, NumericalError
from edgeseg.export.io_spec import INPUTS, OUTPUTS, IOSpec, feed

# The gate of a wrapped model against its core, on the same runtime and images. Measured on
# CamVid val and the smoke model: 100% for float models; an INT8 model's first quantizer sees
# inputs that differ in the last float bit, so a handful of pixels can flip.
IO_AGREEMENT = 0.999
IMAGE_NAME, LABELS_NAME = "image", "labels"


def resolve_io(target: Any, options: dict[str, Any]) -> IOSpec:
    """The IOSpec asked for (`input`, `output` options) or the target's defaults, checked."""
    defaults = getattr(target, "io_defaults", ("tensor", "logits"))
    inp, out = options.get("input") or defaults[0], options.get("output") or defaults[1]
    for flag, value, allowed in (("--input", inp, INPUTS), ("--output", out, OUTPUTS)):
        if value not in allowed:
            raise ConfigError(f"{flag} '{value}' is not one of {', '.join(allowed)}")
    if inp == "image" and "image" not in getattr(target, "io_inputs", INPUTS):
        raise ConfigError(f"the {target.name} target already takes an image (normalised inside the model); leave out --input")
    spec = IOSpec(inp, getattr(target, "io_layout", "NCHW") if inp == "image" else "NCHW", out, None)
    if spec.plain:
        return spec
    if not (hasattr(target, "wrap_io") or getattr(target, "io_in_export", False)):
        raise ConfigError(f"the {target.name} target takes a normalised tensor and gives logits only; leave out --input/--output for it")
    return IOSpec(spec.input, spec.layout, spec.output, getattr(target, "labels_dtype", "uint8") if out == "labels" else None)


def wrap_onnx(src: Path, dst: Path, io: IOSpec, mean: list[float], std: list[float]) -> tuple[str, str]:
    """Write `src` wrapped for `io` to `dst` (NCHW uint8 input); return the (input, output) names."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    core_in, core_out = g.input[0], g.output[0]
    in_name, out_name = core_in.name, core_out.name
    front, back = [], []
    if io.input == "image":
        dims = [d.dim_param or d.dim_value for d in core_in.type.tensor_type.shape.dim]
        image = helper.make_tensor_value_info(IMAGE_NAME, TensorProto.UINT8, dims)
        shift = numpy_helper.from_array(np.asarray(mean, np.float32).reshape(1, 3, 1, 1) * 255, "edgeseg_mean255")
        scale = numpy_helper.from_array(1 / (np.asarray(std, np.float32).reshape(1, 3, 1, 1) * 255), "edgeseg_inv_std255")
        g.initializer.extend([shift, scale])
        front = [
            helper.make_node("Cast", [IMAGE_NAME], ["edgeseg_pixels"], to=TensorProto.FLOAT, name="edgeseg_cast_pixels"),
            helper.make_node("Sub", ["edgeseg_pixels", shift.name], ["edgeseg_centred"], name="edgeseg_subtract_mean"),
            helper.make_node("Mul", ["edgeseg_centred", scale.name], [core_in.name], name="edgeseg_divide_std"),
        ]
        g.input.remove(core_in)
        g.input.insert(0, image)
        in_name = IMAGE_NAME
    if io.output == "labels":
        dims = [d.dim_param or d.dim_value for d in core_out.type.tensor_type.shape.dim]
        elem = TensorProto.UINT8 if io.labels_dtype == "uint8" else TensorProto.INT32
        back = [
            helper.make_node("ArgMax", [core_out.name], ["edgeseg_argmax"], axis=1, keepdims=0, name="edgeseg_argmax"),
            helper.make_node("Cast", ["edgeseg_argmax"], [LABELS_NAME], to=elem, name="edgeseg_cast_labels"),
        ]
        g.output.remove(core_out)
        g.output.insert(0, helper.make_tensor_value_info(LABELS_NAME, elem, [dims[0], *dims[2:]]))
        out_name = LABELS_NAME
    nodes = [*front, *g.node, *back]
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return in_name, out_name


def wrap_openvino(xml: Path, dst: Path, io: IOSpec, mean: list[float], std: list[float]) -> str:
    """Write the IR `xml` wrapped for `io` to `dst` (NHWC uint8 input through the PrePostProcessor,
    TopK + Convert for the labels); return the output's name. Constants are saved as they are."""
    import openvino as ov
    from openvino import opset13 as ops
    from openvino.preprocess import PrePostProcessor

    core = ov.Core()
    core.set_property({"ENABLE_MMAP": False})  # the .bin is replaced by the wrapped one next: never map it
    model = core.read_model(str(xml))
    if io.input == "image":
        ppp = PrePostProcessor(model)
        ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout(io.layout))
        ppp.input().model().set_layout(ov.Layout("NCHW"))
        ppp.input().preprocess().convert_element_type(ov.Type.f32).mean([255 * m for m in mean]).scale([255 * s for s in std])
        model = ppp.build()
    name = model.output(0).get_any_name()
    if io.output == "labels":
        logits = model.get_results()[0].input_value(0)  # the node the Result reads, not the Result
        top = ops.topk(logits, ops.constant(np.int64(1)), axis=1, mode="max", sort="none", index_element_type=ov.Type.i32)
        squeezed = ops.squeeze(top.output(1), ops.constant(np.array([1], np.int64)))
        labels = ops.convert(squeezed, ov.Type.u8 if io.labels_dtype == "uint8" else ov.Type.i32)
        labels.output(0).set_names({LABELS_NAME})
        # The Result reads the class map instead of the logits: the same model object, so its
        # metadata (rt_info: classes, source checkpoint, ...) stays.
        model.get_results()[0].input(0).replace_source_output(labels.output(0))
        model.validate_nodes_and_infer_types()
        name = LABELS_NAME
    ov.save_model(model, str(dst), compress_to_fp16=False)
    return name


def ort_callable(path: Path, threads: int = 2, *, literal: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """An onnxruntime CPU session of `path` as a function of its one input (literal: see common.onnx_session)."""
    from edgeseg.export.common import onnx_session

    session = onnx_session(path, threads, literal=literal)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def wrap_checked_onnx(
    path: Path, io: IOSpec, meta: dict[str, Any], target: str, frames: tuple[list[np.ndarray], str] | None = None
) -> dict[str, Any]:
    """Wrap the verified core ONNX at `path` in place for `io`, check it against the core in
    onnxruntime on `frames` (common.verification_frames; default: 16 of the artifact's data)
    (IO_AGREEMENT); return meta's "io" with the figure, and the new input and output names under
    "input_name", "output_name"."""
    from edgeseg.export.common import verification_frames

    norm = meta["normalization"]
    staged = path.with_name(f"wrapped_{path.name}")
    names = wrap_onnx(path, staged, io, norm["mean"], norm["std"])
    frames, desc = frames or verification_frames(meta, 16)
    agreement = io_agreement(ort_callable(path), ort_callable(staged), frames, io, norm["mean"], norm["std"])
    check_agreement(agreement, io, target)
    staged.replace(path)
    verification = {"reference": "the core ONNX (tensor in, logits out), onnxruntime CPU", "data": desc, "agreement": agreement}
    return {"input_name": names[0], "output_name": names[1], "io": {**io.as_meta(), "verification": verification}}


def io_agreement(
    core: Callable[[np.ndarray], np.ndarray],
    wrapped: Callable[[np.ndarray], np.ndarray],
    frames: list[np.ndarray],
    io: IOSpec,
    mean: list[float],
    std: list[float],
) -> float:
    """Share of pixels whose class the wrapped model gives as its core does, over `frames`
    (uint8 H x W x 3 at the input size): the core is fed the eval transform, the wrapped model
    what `io` says."""
    plain = IOSpec()
    same = total = 0
    for frame in frames:
        size = frame.shape[:2]
        want = np.asarray(core(feed(frame, plain, size, mean, std))).argmax(1)
        got = np.asarray(wrapped(feed(frame, io, size, mean, std)))
        got = got.argmax(1) if io.output == "logits" else got.astype(np.int64)
        if got.shape != want.shape:
            raise NumericalError(f"the wrapped model gives shape {got.shape}, its core {want.shape}: report this")
        same += int((got == want).sum())
        total += want.size
    return same / max(total, 1)


def check_agreement(agreement: float, io: IOSpec, target: str) -> None:
    from edgeseg.export.common import gate

    message = (
        f"the {target} model wrapped for {io.input} in, {io.output} out agrees with its core on {agreement:.3%} of pixels "
        f"(< {IO_AGREEMENT:.1%}); export with --input tensor --output logits and report this"
    )
    gate(agreement >= IO_AGREEMENT, NumericalError(message), io_agreement=agreement)
