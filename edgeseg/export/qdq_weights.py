"""Q/DQ ONNX with int8 weights: every weight stored as an int8 initializer read by its DequantizeLinear.

torch's ONNX export writes a quantized weight as its float tensor followed by QuantizeLinear (and
the scale as a small constant subgraph), so the file holds 4 bytes per weight and every runtime
quantizes the weights again at load. Here the graph's own QuantizeLinear of each constant weight
and the scales and zero points of every Q/DQ are evaluated once, by onnxruntime on the graph
itself (so the int8 values are exactly those the runtime computed), stored as initializers, and
the float weights, the weight QuantizeLinear nodes and the constant subgraphs are dropped. The
result computes bit for bit what the source computes; `int8_weights` checks that on real images
before it replaces anything.

Export side: onnx and onnxruntime are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeseg.errors import NumericalError
from edgeseg.fsutil import write_bytes


def _constant_names(g: Any) -> set[str]:
    """Tensors computed from initializers and Constant nodes only (no graph input upstream)."""
    known = {t.name for t in g.initializer}
    changed = True
    while changed:
        changed = False
        for n in g.node:
            if all(not i or i in known for i in n.input) and not set(n.output) <= known:
                known.update(n.output)
                changed = True
    return known


def _prune(g: Any) -> None:
    """Drop nodes no graph output needs, then initializers no node reads."""
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    del g.node[:]
    g.node.extend(reversed(keep))
    used = [t for t in g.initializer if t.name in needed]
    del g.initializer[:]
    g.initializer.extend(used)


def fold_weights(model: Any, feed: dict[str, np.ndarray]) -> tuple[Any, int]:
    """A copy of `model` with int8 weight initializers; returns (model, weights folded).

    `feed` is any valid input (the constants do not depend on it; onnxruntime needs one to run)."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    g = model.graph
    constant = _constant_names(g)
    weight_q = [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] in constant]
    if not weight_q:
        return model, 0
    qdq = [n for n in g.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    wanted = [n.output[0] for n in weight_q]
    stored = {t.name for t in g.initializer}
    wanted += sorted({i for n in qdq for i in n.input[1:] if i and i in constant and i not in stored})
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    types = {n.output[0]: onnx.TensorProto.INT8 for n in weight_q}
    probe.graph.output.extend(helper.make_tensor_value_info(name, types.get(name, onnx.TensorProto.FLOAT), None) for name in wanted)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the graph's own arithmetic, unfused
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    values = dict(zip(wanted, session.run(wanted, feed)))

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    # An int8 weight takes its float weight's name where that is an initializer (so engines and
    # tools name layers as before), else the QuantizeLinear output's; every reader is rewired.
    inits = {t.name for t in g.initializer}
    rename = {n.output[0]: n.input[0] for n in weight_q if n.input[0] in inits}
    replaced = set(rename.values())
    kept = [t for t in g.initializer if t.name not in replaced]
    del g.initializer[:]
    g.initializer.extend(kept)
    # The weight QuantizeLinear nodes and whatever computed a scale or zero point now stored.
    nodes = [n for n in g.node if not all(o in values for o in n.output)]
    for n in nodes:
        for i, name in enumerate(n.input):
            n.input[i] = rename.get(name, name)
    del g.node[:]
    g.node.extend(nodes)
    for name, value in values.items():
        g.initializer.append(numpy_helper.from_array(np.asarray(value), rename.get(name, name)))
    _prune(g)
    return out, len(weight_q)


def int8_weights(src: Path, dst: Path, check_inputs: list[np.ndarray]) -> dict[str, Any]:
    """Write `src` with int8 weight initializers to `dst`, after checking in onnxruntime that both
    give identical outputs on `check_inputs`; returns sizes and counts for meta.json."""
    import onnx

    from edgeseg.export.common import onnx_session

    size_before = src.stat().st_size  # dst may be src
    model = onnx.load(str(src))
    name = model.graph.input[0].name
    folded, count = fold_weights(model, {name: check_inputs[0]})
    onnx.checker.check_model(folded)
    data = folded.SerializeToString()
    before, after = onnx_session(src), onnx_session(data)
    for x in check_inputs:
        a, b = before.run(None, {name: x})[0], after.run(None, {name: x})[0]
        if not np.array_equal(a, b):
            raise NumericalError(
                f"the ONNX with int8 weight initializers differs from its source (max |diff| {np.abs(a.astype(float) - b).max():.3g}); "
                "report this with the checkpoint"
            )
    write_bytes(dst, data)
    return {"weights_folded": count, "bytes_before": size_before, "bytes_after": len(data), "checked_images": len(check_inputs)}
