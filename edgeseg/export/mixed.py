"""Mixed precision: an INT8 export with its most sensitive layers kept in float.

`edgeseg export CKPT --precision int8 --keep-float K` keeps in float the K layers that
`edgeseg sensitivity` ranks first; `--max-drop D` keeps the fewest that bring INT8 within D mIoU
points of FP32 on the sensitivity run's images (its cumulative curve, `layers_for_drop`), and with
`--max-class-drop C` every class within C IoU points too. The ranking comes from `--sensitivity
FILE.json`, or is measured here on the recipe's val split, at the export's output stride.

A layer is the unit of edgeseg.train.sensitivity: an activation quantizer and the convolutions
reading it, or a convolution alone. Keeping it float switches those quantizers off in the
fake-quant model every target is exported from, so the Q/DQ ONNX has no Q/DQ there, the OpenVINO
IR no FakeQuantize and Core ML no quantize ops. A convolution whose input becomes float that way
(after a concat whose shared quantizer is kept float) keeps float weights too: TensorRT runs INT8
weights only with INT8 inputs (weight-only quantization is INT4-only there), and OpenVINO would
run that convolution in f32 anyway.

The plan traced from the torch model says, for every convolution, whether its weights and its
input are INT8. Each target reads its own graph back and is held to the plan
(edgeseg.export.mixed_verify), so an artifact keeps exactly the listed layers in float and every
other weighted layer in INT8, or the export fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from edgeseg.errors import CheckpointError, ConfigError, did_you_mean

log = logging.getLogger(__name__)

DEFAULT_IMAGES = 24  # what `edgeseg sensitivity` scores by default
DEFAULT_CURVE = 10
Progress = Callable[[int, int], None]
State = tuple[bool, bool]  # (INT8 weights, INT8 input) of one convolution


@dataclass
class Add:
    """An add of two tensors (a residual): the quantizers its inputs come from, and which are INT8."""

    label: str
    int8: tuple[bool, bool]


@dataclass
class Plan:
    """What an artifact must show: every convolution's precision, traced from the torch model."""

    layers: list[str]  # the sensitivity layers kept float, most sensitive first
    convs: dict[str, State]  # every convolution of the forward, in execution order
    shapes: dict[str, tuple[int, ...]]  # their weight shapes (Core ML's convs are matched by order)
    activations: dict[str, bool]  # every activation quantizer the forward calls: INT8 or float
    adds: list[Add] = field(default_factory=list)  # in execution order (Core ML's are matched by order)
    # quantizers of one same tensor (a graph optimiser may merge their Q/DQ when the scales match)
    siblings: dict[str, list[str]] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def float_convs(self) -> list[str]:
        """The convolutions whose weights stay float (every other one is INT8, weights and input)."""
        return [c for c, (w, _) in self.convs.items() if not w]


def requested(options: dict[str, Any]) -> bool:
    return any(options.get(k) is not None for k in ("keep_float", "max_drop", "max_class_drop", "sensitivity"))


def check_options(precision: str, options: dict[str, Any]) -> None:
    """Range-check --keep-float/--max-drop/--sensitivity before any work (no checkpoint needed)."""
    k, d = options.get("keep_float"), options.get("max_drop")
    if k is not None and d is not None:
        raise ConfigError("--keep-float and --max-drop are exclusive; pass one (K layers float, or the fewest within D mIoU points)")
    if options.get("max_class_drop") is not None and d is None:
        raise ConfigError("--max-class-drop limits the per-class loss of --max-drop's choice; pass --max-drop D with it")
    if k is None and d is None:
        raise ConfigError("--sensitivity FILE needs --keep-float K or --max-drop D to choose layers from it")
    if precision != "int8":
        raise ConfigError(f"--keep-float/--max-drop keep layers of an INT8 export in float; use --precision int8, not {precision}")
    if options.get("ptq"):
        raise ConfigError("--keep-float/--max-drop apply to the checkpoint's own INT8 ranges, not to --ptq; leave one of them out")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise ConfigError(f"--keep-float {k} is out of range; use 0..the number of layers")
    from edgeseg.train.sensitivity import check_points

    check_points(d, "--max-drop", "mIoU points")
    check_points(options.get("max_class_drop"), "--max-class-drop", "IoU points")


def resolve(request: Any, *, progress: Progress | None = None, model: torch.nn.Module | None = None) -> None:
    """Choose the float layers of `request` once: request.options gains float_layers and float_source.

    Measures the sensitivity (calling `progress(done, total)`) when no --sensitivity file is
    given and K > 0. Does nothing without --keep-float/--max-drop/--sensitivity, or when done.

    Raises:
        ConfigError: an option out of range, or a drop no measured layer set reaches.
        CheckpointError: an FP32 checkpoint, or a sensitivity file that is invalid or of another checkpoint.
    """
    from edgeseg.train.checkpoint import file_hash, load_checkpoint, model_from_checkpoint
    from edgeseg.train.sensitivity import checkpoint_sensitivity, layers_for_drop, layers_of, read_sensitivity

    o, ckpt_path = request.options, request.checkpoint
    if not requested(o) or "float_layers" in o:
        return
    check_options(request.precision, o)
    ckpt = load_checkpoint(ckpt_path)
    if not ckpt.get("quant"):
        raise CheckpointError(
            f"'{ckpt_path}' is an FP32 checkpoint; --keep-float/--max-drop need an INT8 one: "
            f"run 'edgeseg calibrate {ckpt_path} ...' (PTQ) or use qat.pt"
        )
    stride = int(request.output_stride or ckpt["arch"]["output_stride"])  # the export's: sensitivity is measured there
    if model is None:
        model = model_from_checkpoint(ckpt)
        model.set_input_size((64, 64))  # any size: the layers do not depend on it
    names = [layer.name for layer in layers_of(model, torch.zeros(1, 3, *_size(model)))]
    k, d, c, file = o.get("keep_float"), o.get("max_drop"), o.get("max_class_drop"), o.get("sensitivity")
    if k is not None and k > len(names):
        raise ConfigError(f"--keep-float {k} is out of range; '{ckpt_path}' has {len(names)} layers: use 0..{len(names)}")
    sha = file_hash(ckpt_path)
    result = read_sensitivity(file) if file is not None else None
    if result is not None:
        _same_checkpoint(result, Path(file), ckpt_path, sha, names)
        _same_stride(result, Path(file), ckpt_path, stride, int(ckpt["arch"]["output_stride"]))
    elif k != 0:
        curve = DEFAULT_CURVE if k is None else min(k, len(names))
        result = checkpoint_sensitivity(
            ckpt_path, images=DEFAULT_IMAGES, cumulative=curve, output_stride=stride, max_class_drop=c, progress=progress
        )
    if result is None:
        chosen: list[str] = []  # --keep-float 0: nothing to rank
    else:
        chosen = [s.name for s in result.layers[:k]] if k is not None else layers_for_drop(result, float(d), c)
    o["float_layers"] = chosen
    o["float_source"] = {**_source(result, file, k, d, chosen, sha), "max_class_drop": c, "output_stride": stride}


def _size(model: torch.nn.Module) -> tuple[int, int]:
    size = getattr(model, "input_size", None)
    return (int(size[0]), int(size[1])) if size else (64, 64)


def _same_checkpoint(result: Any, file: Path, ckpt: Any, sha: str, names: list[str]) -> None:
    fix = f"measure this one with 'edgeseg sensitivity {ckpt} --json FILE' and pass that"
    if result.checkpoint_sha256 is not None and result.checkpoint_sha256 != sha:
        raise CheckpointError(f"'{file}' ranks the layers of another checkpoint ({result.checkpoint}), not '{ckpt}'; {fix}")
    ranked = [s.name for s in result.layers]
    if sorted(ranked) != sorted(names):
        odd = sorted(set(ranked) ^ set(names))[0]
        raise CheckpointError(f"'{file}' was measured on another model: layer '{odd}' is in one of the two only; {fix}")


def _same_stride(result: Any, file: Path, ckpt: Any, stride: int, own: int) -> None:
    measured = result.output_stride or own  # a file that does not say was measured at the checkpoint's stride
    if measured != stride:
        raise CheckpointError(
            f"'{file}' was measured at output stride {measured}, this export is at {stride}; "
            f"measure it there with 'edgeseg sensitivity {ckpt} --output-stride {stride} --json FILE'"
        )


def _source(result: Any, file: Any, k: int | None, d: float | None, chosen: list[str], sha: str) -> dict[str, Any]:
    from edgeseg.train.checkpoint import file_hash

    point = next((p for p in (result.cumulative if result else []) if p["k"] == len(chosen)), None)
    return {
        "keep_float": k,
        "max_drop": d,
        "sensitivity": None if result is None else str(file) if file is not None else "measured on the recipe's val split",
        "sensitivity_sha256": file_hash(file) if file is not None else None,
        "checkpoint_sha256": sha,
        "images": result.images if result else None,
        "float_miou": result.float_miou if result else None,
        "int8_miou": result.int8_miou if result else None,
        "expected_miou": point["miou"] if point else (result.int8_miou if result and not chosen else None),
    }


def apply(model: torch.nn.Module, request: Any, meta: dict[str, Any]) -> Plan | None:
    """Keep the request's float layers float in `model` (as loaded from its checkpoint), record them
    in `meta` and attach the plan the targets verify against (see plan_of). None when not asked."""
    if not requested(request.options):
        return None
    resolve(request, model=model)
    plan = plan_for(model, list(request.options["float_layers"]), tuple(meta["input_size"]))
    plan.source = dict(request.options["float_source"])
    meta.update({"float_layers": plan.layers, "float_convs": plan.float_convs, "float_source": plan.source})
    model.edgeseg_float_plan = plan  # type: ignore[assignment]
    log.info("keeping %d layers float (%d convolutions): %s", len(plan.layers), len(plan.float_convs), ", ".join(plan.layers))
    return plan


def plan_of(model: Any) -> Plan | None:
    """The plan `apply` attached to a model (None: every layer INT8, the usual rules apply)."""
    return getattr(model, "edgeseg_float_plan", None)


def plan_for(model: torch.nn.Module, names: list[str], size: tuple[int, ...]) -> Plan:
    """Switch the layers `names` to float on top of the checkpoint's own float quantizers, then
    trace every convolution's precision.

    Raises:
        CheckpointError: a name that is not a layer of this model.
    """
    from edgeseg.quant import set_quant_enabled
    from edgeseg.train.sensitivity import keep_float, layers_of

    example = torch.zeros(1, 3, *size)
    layers = {layer.name: layer for layer in layers_of(model, example)}
    for name in names:
        if name not in layers:
            raise CheckpointError(f"'{name}' is not a layer of this model{did_you_mean(name, layers)}; re-run 'edgeseg sensitivity'")
    state = model.edgeseg_quant  # type: ignore[attr-defined]
    base = state.setdefault("checkpoint_disabled", list(state.get("disabled", [])))
    keep_float(model, [layers[n] for n in names], base)
    plan = trace(model, example)
    weight_only = [c for c, (w, i) in plan.convs.items() if w and not i]
    if weight_only:  # no INT8 weights on a float input (see the module docstring)
        state["disabled"] = sorted(set(state["disabled"]) | set(weight_only))
        set_quant_enabled(model, True)
        plan = trace(model, example)
    plan.layers = list(names)
    return plan


class _Tags(TorchFunctionMode):
    """Follows which tensors are INT8-valued (a quantizer's output, a concat or broadcast of them)
    and which quantizer last passed each tensor, and records every add of two tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.int8: dict[int, torch.Tensor] = {}  # the tensors are kept, so no id is reused
        self.names: dict[int, tuple[torch.Tensor, str]] = {}
        self.adds: list[Add] = []

    def mark(self, t: torch.Tensor, name: str, int8: bool) -> None:
        self.names[id(t)] = (t, name)
        if int8:
            self.int8[id(t)] = t

    def marked(self, t: Any) -> bool:
        return self.int8.get(id(t)) is t

    def name(self, t: Any) -> str | None:
        hit = self.names.get(id(t))
        return hit[1] if hit is not None and hit[0] is t else None

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in (torch.cat, torch.concat):
            parts = kwargs.get("tensors", args[0] if args else ())
            if parts and all(self.marked(p) for p in parts):
                self.int8[id(out)] = out
        elif func in (torch.Tensor.expand, torch.Tensor.expand_as) and self.marked(args[0]):
            self.int8[id(out)] = out
        elif func in (torch.add, torch.Tensor.add, torch.Tensor.__add__) and all(isinstance(a, torch.Tensor) for a in args[:2]):
            a, b = args[:2]
            label = " + ".join(n or "?" for n in (self.name(a), self.name(b)))
            self.adds.append(Add(label, (self.marked(a), self.marked(b))))
        return out


def trace(model: torch.nn.Module, example: torch.Tensor) -> Plan:
    """One forward: each convolution's (INT8 weights, INT8 input) and weight shape, in execution
    order; each activation quantizer called (INT8 or float) and what it quantizes; every add of
    two tensors, in order. The plan of the model as it is (no layers named)."""
    from edgeseg.quant import QuantConv2d, TensorQuantizer

    names = {m: n for n, m in model.named_modules()}
    convs: dict[str, State] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    acts: dict[str, bool] = {}
    inputs: dict[int, tuple[torch.Tensor, list[str]]] = {}
    tags = _Tags()

    def quantized(mod: Any, inp: Any, out: torch.Tensor) -> None:
        acts[names[mod]] = mod.mode == "quant"
        tags.mark(out, names[mod], mod.mode == "quant")
        inputs.setdefault(id(inp[0]), (inp[0], []))[1].append(names[mod])

    def conv(mod: Any, inp: Any) -> None:
        convs[names[mod]] = (bool(mod.quant_weight), tags.marked(inp[0]))
        shapes[names[mod]] = tuple(mod.weight.shape)

    hooks = [m.register_forward_hook(quantized) for m in model.modules() if isinstance(m, TensorQuantizer)]
    hooks += [m.register_forward_pre_hook(conv) for m in model.modules() if isinstance(m, QuantConv2d)]
    try:
        with torch.no_grad(), tags:
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    siblings = {n: sorted(set(group)) for _, group in inputs.values() for n in group}
    return Plan([], convs, shapes, acts, tags.adds, siblings)
