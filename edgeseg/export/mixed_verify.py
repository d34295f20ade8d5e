"""Holding an artifact to its plan (edgeseg.export.mixed): layers kept float, every other INT8.

Each target reads its own graph (onnx_export.check_qdq, openvino_ir.float_layer_problems,
coreml.inspect_mlpackage) into per-convolution states, (INT8 weights, INT8 input), and the
activations it quantizes; the functions here compare those with the plan traced from the torch
model. Graphs converted from the ONNX keep torch.onnx's scope names (`module_of`); Core ML's ops
carry no module names, so its convolutions and residual adds are matched in execution order.
`verify_artifact` does it for a written artifact, from its meta.json.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch

from edgeseg.errors import TargetError
from edgeseg.export.mixed import Plan, State, plan_for


def module_of(node: str, known: Iterable[str]) -> str | None:
    """The module a graph node was exported from, by torch.onnx's scope naming (None: not one of `known`).

    "/decoder/fuse/fuse.0/fuse.0.0/fuse.0.0.0/Conv" -> decoder.fuse.0.0.0 (a scope that extends the
    previous one replaces it); "/decoder/aspp/cat_q_2/QuantizeLinear" -> decoder.aspp.cat_q (a
    module called again gets _N). OpenVINO keeps these names on the ops it converts.
    """
    known = set(known)
    path: list[str] = []
    for part in [p for p in node.split("/") if p][:-1]:  # the last part names the op
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    name = ".".join(path)
    if name in known:
        return name
    base = re.sub(r"_\d+$", "", name)
    return base if base in known else None


def _state(s: State) -> str:
    return f"{'INT8' if s[0] else 'float'} weights, {'INT8' if s[1] else 'float'} input"


def compare(read: dict[str, State], plan: Plan, unattributed: Iterable[str] = ()) -> list[str]:
    """Problems of convolution states read from a graph (by module name) against the plan."""
    problems = [f"graph conv '{n}' matches no convolution of the model" for n in unattributed]
    for conv, want in plan.convs.items():
        got = read.get(conv)
        if got is None:
            problems.append(f"conv '{conv}' is missing from the graph")
        elif got != want:
            problems.append(f"conv '{conv}' has {_state(got)}, expected {_state(want)}")
    return problems


def graph_problems(convs: dict[str, State], quantized: Iterable[str], plan: Plan) -> list[str]:
    """A graph named by torch.onnx scopes (ONNX, OpenVINO): convolution states by node name, and the
    names of the nodes that quantize activations, against the plan."""
    read: dict[str, State] = {}
    lost = []
    for node, s in convs.items():
        name = module_of(node, plan.convs)
        if name is None:
            lost.append(node)
        else:
            read[name] = s
    problems = compare(read, plan, lost)
    floats = {a for a, int8 in plan.activations.items() if not int8}
    problems += [f"'{q}' quantizes activation '{a}', which is kept float" for q in quantized if (a := module_of(q, floats))]
    found = {module_of(q, plan.activations) for q in quantized}
    for act, int8 in plan.activations.items():
        if int8 and not found & set(plan.siblings.get(act, [act])):
            problems.append(f"nothing quantizes activation '{act}' in the graph, which is INT8 in the model")
    return problems


def ordered_problems(states: list[tuple[bool, bool, tuple[int, ...]]], adds: list[tuple[bool, bool]], plan: Plan) -> list[str]:
    """A graph whose ops carry no module names (Core ML): its convolutions, in program order,
    matched to the model's in execution order, each match confirmed by its weight shape; and its
    adds of two tensors (residuals), whose inputs are INT8 where the model's are."""
    names = list(plan.convs)
    if len(states) != len(names):
        return [f"the graph has {len(states)} convolutions, the model {len(names)}"]
    read: dict[str, State] = {}
    for i, (name, (w, x, shape)) in enumerate(zip(names, states)):
        if tuple(shape) != plan.shapes[name]:
            return [f"graph conv #{i} has weights {tuple(shape)}, model conv '{name}' {plan.shapes[name]}: the convolutions do not match"]
        read[name] = (w, x)
    problems = compare(read, plan)
    if len(adds) != len(plan.adds):
        return [*problems, f"the graph has {len(adds)} adds of two tensors, the model {len(plan.adds)}"]
    for got, want in zip(adds, plan.adds):
        if sorted(got) != sorted(want.int8):  # an add's operands may be swapped
            n = sum(want.int8)
            problems.append(f"the add {want.label} has {sum(got)} INT8 inputs, expected {n}")
    return problems


def summary(problems: list[str]) -> str:
    """The first problem and how many more (one line)."""
    return problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")


def fail(problems: list[str], what: str) -> None:
    """Raise the one-line TargetError for a graph that does not keep exactly the plan's float layers."""
    if problems:
        raise TargetError(
            f"{what} does not keep exactly the float layers of meta.json in float and the rest INT8: {summary(problems)}; "
            "re-export it (in a fresh export this is a bug: run with --verbose)"
        )


def verify_artifact(folder: str | Path, model: torch.nn.Module) -> Plan:
    """Check an exported artifact against its meta.json: the layers it lists float, every other
    weighted layer INT8, read from the artifact's graph. `model`: its checkpoint, freshly loaded.

    Raises:
        TargetError: the graph does not match meta.json's float layers.
    """
    from edgeseg.export.meta import read_meta

    folder = Path(folder)
    meta = read_meta(folder)
    if meta["precision"] != "int8":
        raise TargetError(f"'{folder}' is a {meta['precision']} artifact; only INT8 ones keep layers in float")
    plan = plan_for(model, list(meta.get("float_layers", [])), tuple(meta["input_size"]))
    problems = read_back(meta["target"], folder / meta["model_file"], plan)
    listed = set(meta.get("float_convs", []))
    problems += [f"meta.json's float_convs lacks '{c}', which its float_layers make float" for c in plan.float_convs if c not in listed]
    problems += [f"meta.json's float_convs lists '{c}', which its float_layers keep INT8" for c in sorted(listed - set(plan.float_convs))]
    fail(problems, f"'{folder}'")
    return plan


def read_back(target: str, path: Path, plan: Plan) -> list[str]:
    """The problems of an artifact's model file against the plan, read with its target's tools."""
    if target in ("onnx", "jetson"):
        import onnx

        from edgeseg.export.onnx_export import check_qdq

        return check_qdq(onnx.load(str(path)), plan)
    if target == "openvino":
        from edgeseg.export.openvino_ir import float_layer_problems

        return float_layer_problems(path, plan)
    if target == "coreml":
        from edgeseg.export.coreml import inspect_mlpackage

        info = inspect_mlpackage(path)
        return ordered_problems(info["conv_states"], info["add_states"], plan)
    raise TargetError(f"target '{target}' has no float-layer read-back; this is a bug")
