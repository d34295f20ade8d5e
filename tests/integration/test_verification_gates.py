"""Every verification gate of edgeseg.export fires on a broken artifact and passes a sound one.

The gates, at the thresholds the CLI uses (imported from the code, never lowered here):
- the ONNX every target starts from (edgeseg.export.onnx_export): NaN/inf logits, FP32 logits
  within FP32_TOLERANCE of PyTorch, the Q/DQ rules of an INT8 graph;
- OpenVINO (verify_ir): FLOAT_AGREEMENT for FP32/FP16, INT8_AGREEMENT for the INT8 IR on the
  signed grid and for NNCF's IR against the FP32 model, LOWERED_AGREEMENT for the shipped u8 IR;
  NaN/inf logits;
- Jetson: the FP16 ONNX against the FP32 ONNX, at FLOAT_AGREEMENT;
- Core ML (verify_mlpackage): the image input, the output shape, the class names, int8 convs.

A broken artifact is the exporter's own output with its logits replaced on a known fraction of
the pixels (`break_onnx`): by the class channels rolled by one, so each such pixel changes class,
or by NaN. Its agreement with the sound artifact is then at most 1 - fraction: a fraction a
little above 1 - gate must fail the export, and one below it (with the runtimes' own near-tie
flips on top) must pass, so a gate set lower than the CLI's fails a test.
Tiny model: 4 classes, width 0.35, output stride 16, 64x64, synthetic scenes.
"""

from __future__ import annotations

import dataclasses
import platform
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from edgeseg.config import recipe_from_dict
from edgeseg.data import open_source
from edgeseg.data.classes import ClassInfo
from edgeseg.data.preprocess import preprocess
from edgeseg.errors import NumericalError, TargetError
from edgeseg.export import coreml as CM
from edgeseg.export import onnx_export as OE
from edgeseg.export import openvino as OV
from edgeseg.export import tensorrt as T
from edgeseg.export.artifacts import artifact_name, export_artifact
from edgeseg.export.base import ExportRequest
from edgeseg.export.common import FLOAT_AGREEMENT, INT8_AGREEMENT, argmax_agreement
from edgeseg.export.onnx_export import FP32_TOLERANCE
from edgeseg.export.openvino import LOWERED_AGREEMENT
from edgeseg.models import build_model
from edgeseg.quant import quant_state, quantize
from edgeseg.quant.data import array_loop
from edgeseg.train.checkpoint import save_checkpoint

pytestmark = pytest.mark.integration
SIZE = (64, 64)
# The FP16 gate is checked on the logits a broken model gives (its class map would hide how far off they are).
LOGITS = {"input": "tensor", "output": "logits"}
SYNTH = {"num_train": 8, "num_val": 4, "size": list(SIZE), "seed": 0}
CLASSES = ClassInfo(("sky", "road", "car", "tree"), ((128, 128, 128), (128, 64, 128), (64, 0, 128), (128, 128, 0)))
AGREES = re.compile(r"on (?:only )?([\d.]+)% of pixels")


def _tiny_model() -> torch.nn.Module:
    """The tiny model with BatchNorm statistics of real scenes (train-mode passes), so activations have real ranges."""
    torch.manual_seed(0)
    model = build_model(num_classes=4, output_stride=16, width_mult=0.35)
    source = open_source("synthetic", None, "train", SYNTH)
    batch = torch.from_numpy(np.concatenate([preprocess(source.load(i)[0], SIZE) for i in range(4)]))
    with torch.no_grad():
        model.train()
        for _ in range(3):
            model(batch)
    model.eval().set_input_size(SIZE)
    return model


def _quantized(model: torch.nn.Module) -> torch.nn.Module:
    source = open_source("synthetic", None, "train", SYNTH)
    return quantize(model, {"method": "percentile", "percentile": 99.99}, array_loop(lambda i: source.load(i)[0], len(source), SIZE))


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An FP32 checkpoint and its PTQ (calibrated) checkpoint, with a synthetic-scenes recipe."""
    folder = tmp_path_factory.mktemp("gates")
    recipe = recipe_from_dict(
        {
            "name": "gates",
            "model": {"width_mult": 0.35, "output_stride": 16},
            "data": {"format": "synthetic", "synthetic_num_train": 8, "synthetic_num_val": 4, "synthetic_size": list(SIZE)},
            "quant": {"calib_num_images": 8},
            "export": {"input_size": list(SIZE)},
        }
    )
    model = _tiny_model()
    save_checkpoint(folder / "fp32.pt", model=model, recipe=recipe, classes=CLASSES)
    q = _quantized(model)
    quant_meta = {"method": "percentile", "calib_list": "synthetic:train", "num_images": 8, "qat": False}
    save_checkpoint(folder / "ptq.pt", model=q, recipe=recipe, classes=CLASSES, quant=quant_state(q), quant_meta=quant_meta)
    return {"fp32": folder / "fp32.pt", "ptq": folder / "ptq.pt"}


def break_onnx(src: Path, dst: Path, *, fraction: float, mode: str = "roll", value: float = 0.0) -> None:
    """Copy an ONNX file with its logits replaced on `fraction` of the pixels (the same pixels in every image).

    mode "roll": the class channels rolled by one (each such pixel changes class); "nan": NaN;
    "add": the logits plus `value`.
    """
    model = onnx.load(str(src))
    graph = model.graph
    out = graph.output[0].name
    producer = next(n for n in graph.node if out in n.output)
    producer.output[list(producer.output).index(out)] = clean = out + "_sound"
    h, w = SIZE
    mask = np.zeros(h * w, dtype=bool)
    mask[np.linspace(0, h * w - 1, round(fraction * h * w)).round().astype(int)] = True  # spread, distinct
    consts = [numpy_helper.from_array(mask.reshape(1, 1, h, w), "break_mask")]
    if mode == "roll":
        classes = len(CLASSES.names)
        consts.append(numpy_helper.from_array(np.roll(np.arange(classes), -1).astype(np.int64), "break_roll"))
        nodes = [helper.make_node("Gather", [clean, "break_roll"], ["break_alt"], axis=1)]
    else:
        consts.append(numpy_helper.from_array(np.full((1, 1, 1, 1), np.nan if mode == "nan" else value, np.float32), "break_value"))
        nodes = [helper.make_node("Add", [clean, "break_value"], ["break_alt"])] if mode == "add" else []
    alt = "break_alt" if nodes else "break_value"
    nodes.append(helper.make_node("Where", ["break_mask", alt, clean], [out]))
    graph.initializer.extend(consts)
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def _export(ckpt: Path, target: str, precision: str, out: Path, **options: Any) -> dict[str, Any]:
    request = ExportRequest(checkpoint=ckpt, precision=precision, out_dir=out, options=dict(options))
    return export_artifact(request, target).meta


def _measured(exc: pytest.ExceptionInfo[NumericalError]) -> float:
    """The agreement an error message reports (as a fraction)."""
    found = AGREES.search(str(exc.value))
    assert found, str(exc.value)
    return float(found.group(1)) / 100


# --- the ONNX every target starts from ------------------------------------------------------------


def _broken_torch_export(monkeypatch: pytest.MonkeyPatch, **breakage: Any) -> None:
    """Make the exporter write a broken ONNX: the torch.onnx output, then `break_onnx` on it."""
    real = OE._torch_export

    def broken(model: torch.nn.Module, x: torch.Tensor, path: Path, opset: int, dynamic_batch: bool) -> int:
        opset = real(model, x, path, opset, dynamic_batch)
        break_onnx(path, path, **breakage)
        return opset

    monkeypatch.setattr(OE, "_torch_export", broken)


def _logit_scale(model: torch.nn.Module) -> float:
    """max(1, max |logit|) on export_onnx's own check input (torch.randn, seed 0): the tolerance's scale."""
    x = torch.randn(1, 3, *SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return max(1.0, float(model(x).abs().max()))


@pytest.mark.parametrize("times_tolerance", [0.5, 2.0])
def test_fp32_onnx_tolerance_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, times_tolerance: float) -> None:
    """Logits off by 2x FP32_TOLERANCE (relative to the logit scale) fail the export; 0.5x passes."""
    model = _tiny_model()
    delta = times_tolerance * FP32_TOLERANCE * _logit_scale(model)
    _broken_torch_export(monkeypatch, fraction=0.01, mode="add", value=delta)
    if times_tolerance > 1:
        with pytest.raises(NumericalError, match=r"^FP32 ONNX differs from PyTorch by .*; report this with the checkpoint$"):
            OE.export_onnx(model, tmp_path / "m.onnx", input_size=SIZE, meta={})
        assert not (tmp_path / "m.onnx").exists()
        return
    report = OE.export_onnx(model, tmp_path / "m.onnx", input_size=SIZE, meta={})
    assert report["max_abs_diff"] == pytest.approx(delta, rel=0.05)  # the shift added, not the exporter's own error


def _last_conv(model: torch.nn.Module) -> torch.nn.Conv2d:
    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]


@pytest.mark.parametrize("quantized", [False, True], ids=["fp32", "int8"])
@pytest.mark.parametrize("broken", ["weights", "graph"])
def test_onnx_nan_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quantized: bool, broken: str) -> None:
    """NaN logits fail the export, from a NaN weight (checkpoint loaders refuse them, a model in memory
    does not) or from a broken graph."""
    model = _quantized(_tiny_model()) if quantized else _tiny_model()
    if broken == "weights":
        with torch.no_grad():
            _last_conv(model).bias[1] = float("nan")
    else:
        _broken_torch_export(monkeypatch, fraction=0.001, mode="nan")
    with pytest.raises(NumericalError, match="^onnxruntime produced NaN/inf logits .*broken$"):
        OE.export_onnx(model, tmp_path / "m.onnx", input_size=SIZE, meta={})
    assert not (tmp_path / "m.onnx").exists()


def test_qdq_rules_gate(tmp_path: Path) -> None:
    """An INT8 model with one convolution's weight left float breaks the Q/DQ rules TensorRT needs."""
    q = _quantized(_tiny_model())
    OE.export_onnx(q, tmp_path / "sound.onnx", input_size=SIZE, meta={})  # the sound one passes
    conv = next(m for m in q.modules() if getattr(m, "quant_weight", False))
    conv.quant_weight = False
    with pytest.raises(NumericalError, match=r"breaks the Q/DQ rules: Conv '.*' weight is not behind a per-channel"):
        OE.export_onnx(q, tmp_path / "broken.onnx", input_size=SIZE, meta={})


def test_agreement_needs_equal_shapes() -> None:
    with pytest.raises(TargetError, match=r"output shapes differ: \(1, 4, 8, 8\) vs \(1, 5, 8, 8\)"):
        argmax_agreement(np.zeros((1, 4, 8, 8)), np.zeros((1, 5, 8, 8)))


# --- OpenVINO: verify_ir at the CLI's gates ---------------------------------------------------------

PIXELS = SIZE[0] * SIZE[1]
ROLL_FLOAT_OK, ROLL_FLOAT_BAD = 0.002, 0.006  # agreement <= 99.8% / <= 99.4%: FLOAT_AGREEMENT (99.5%) sits between
ROLL_INT8_OK, ROLL_INT8_BAD = 0.005, 0.025  # <= 99.5% / <= 97.5%: INT8_AGREEMENT (98%) between; 0.95 would pass the bad one
ROLL_U8_BAD = 0.035  # <= 96.5%: below LOWERED_AGREEMENT (97%)


class OVCase(NamedTuple):
    ckpt: str  # "fp32" or "ptq"
    precision: str
    options: dict[str, Any]
    where: str  # what is broken (see _break_openvino)
    fraction: float  # of the pixels whose logits are replaced
    gate: float | str | None  # the gate that must fire ("nan": the NaN check); None: the export passes
    mode: str = "roll"


OPENVINO = {
    "fp32-sound": OVCase("fp32", "fp32", {}, "ir", ROLL_FLOAT_OK, None),
    "fp32-broken": OVCase("fp32", "fp32", {}, "ir", ROLL_FLOAT_BAD, FLOAT_AGREEMENT),
    "fp32-nan": OVCase("fp32", "fp32", {}, "ir", 0.001, "nan", mode="nan"),
    "fp16-broken": OVCase("fp32", "fp16", {}, "ir", ROLL_FLOAT_BAD, FLOAT_AGREEMENT),
    "int8-sound": OVCase("ptq", "int8", {}, "ir", ROLL_INT8_OK, None),
    "int8-broken": OVCase("ptq", "int8", {}, "ir", ROLL_INT8_BAD, INT8_AGREEMENT),  # its signed-grid twin fails first
    "int8-u8-broken": OVCase("ptq", "int8", {}, "shipped", ROLL_U8_BAD, LOWERED_AGREEMENT),
    "int8-exact-grid-broken": OVCase("ptq", "int8", {"exact_grid": True}, "ir", ROLL_INT8_BAD, INT8_AGREEMENT),
    "nncf-sound": OVCase("fp32", "int8", {"ptq": "nncf"}, "nncf", ROLL_INT8_OK, None),
    "nncf-broken": OVCase("fp32", "int8", {"ptq": "nncf"}, "nncf", ROLL_INT8_BAD, INT8_AGREEMENT),
}


def _break_openvino(monkeypatch: pytest.MonkeyPatch, where: str, **breakage: Any) -> None:
    """Break the IR the exporter writes, not the ONNX it is verified against: every IR ("ir"),
    only the shipped u8 one after its sound signed-grid twin ("shipped"), or NNCF's input ("nncf")."""

    def broken_copy(onnx_path: Path) -> Path:
        broken = onnx_path.with_name("broken.onnx")
        break_onnx(onnx_path, broken, **breakage)
        return broken

    real_ir, real_nncf = OV.ir_from_onnx, OV.nncf_quantize_ir

    def ir(onnx_path: Path, out_dir: Path, *, precision: str, exact_grid: bool = False) -> tuple[Path, int]:
        hit = where == "ir" or (where == "shipped" and not exact_grid)
        return real_ir(broken_copy(onnx_path) if hit else onnx_path, out_dir, precision=precision, exact_grid=exact_grid)

    def nncf(fp32_onnx: Path, out_dir: Path, calibration: list[np.ndarray]) -> Path:
        return real_nncf(broken_copy(fp32_onnx), out_dir, calibration)

    monkeypatch.setattr(OV, "ir_from_onnx", ir)
    if where == "nncf":
        monkeypatch.setattr(OV, "nncf_quantize_ir", nncf)


@pytest.mark.parametrize("case", OPENVINO.values(), ids=OPENVINO.keys())
def test_openvino_gates(ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: OVCase) -> None:
    ckpt, precision, options, where, fraction, gate, mode = case
    _break_openvino(monkeypatch, where, fraction=fraction, mode=mode)
    bound = 1 - round(fraction * PIXELS) / PIXELS  # the most a broken IR can agree with its reference
    folder = tmp_path / artifact_name("openvino", precision, 16, options.get("ptq"))
    if gate is None:
        v = _export(ckpts[ckpt], "openvino", precision, tmp_path, **options)["verification"]
        shipped_gate = FLOAT_AGREEMENT if precision != "int8" else INT8_AGREEMENT if options else LOWERED_AGREEMENT
        assert v["min_agreement"] == shipped_gate and shipped_gate <= v["argmax_agreement"] <= bound
        if precision == "int8" and not options:  # the signed-grid twin: the conversion, at the INT8 gate
            assert INT8_AGREEMENT <= v["exact_grid_agreement"] <= bound
        if options.get("ptq"):
            assert v["reference"] == "onnxruntime FP32 ONNX" and v["weighted_layers_int8"] == v["weighted_layers"] > 60
        assert folder.is_dir()
        return
    with pytest.raises(NumericalError, match=r"^OpenVINO '.*model.xml' ") as exc:
        _export(ckpts[ckpt], "openvino", precision, tmp_path, **options)
    if gate == "nan":
        assert "produced NaN/inf logits" in str(exc.value)
    else:
        assert f"(< {gate:.1%})" in str(exc.value) and _measured(exc) <= bound + 1e-4
        assert ("NNCF's post-training quantization lost too much" in str(exc.value)) == bool(options.get("ptq"))
    assert not folder.exists()  # a failed verification leaves no artifact


# --- Jetson: the FP16 ONNX against the FP32 ONNX ------------------------------------------------------


def _break_fp16(monkeypatch: pytest.MonkeyPatch, fraction: float) -> None:
    """The Jetson exporter's FP16 ONNX, with `fraction` of its logits broken (break_onnx)."""
    real = T.fp16_onnx

    def broken(src: Path, dst: Path) -> bool:
        made = real(src, dst)
        break_onnx(dst, dst, fraction=fraction)
        return made

    monkeypatch.setattr(T, "fp16_onnx", broken)


@pytest.mark.parametrize(("fraction", "fires"), [(ROLL_FLOAT_OK, False), (ROLL_FLOAT_BAD, True)], ids=["sound", "broken"])
def test_jetson_fp16_gate(ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fraction: float, fires: bool) -> None:
    _break_fp16(monkeypatch, fraction)
    bound = 1 - round(fraction * PIXELS) / PIXELS
    if not fires:
        v = _export(ckpts["fp32"], "jetson", "fp16", tmp_path, **LOGITS)["verification"]["fp16_onnx"]
        assert FLOAT_AGREEMENT <= v["argmax_agreement"] <= bound
        return
    with pytest.raises(NumericalError, match=r"^the FP16 ONNX agrees with FP32 on .*; use TensorRT 10 with --fp16 or report this$") as exc:
        _export(ckpts["fp32"], "jetson", "fp16", tmp_path, **LOGITS)
    assert f"(< {FLOAT_AGREEMENT:.1%})" in str(exc.value) and _measured(exc) <= bound + 1e-4
    assert not (tmp_path / "jetson_fp16_os16_tensor-logits").exists()


def test_force_keeps_a_failed_artifact_marked_unverified(ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`export --force`: the same broken FP16 ONNX is written, meta.json says verified: false with the
    gate's figure, and bench carries the mark into its row (and the report's label)."""
    _break_fp16(monkeypatch, ROLL_FLOAT_BAD)
    meta = _export(ckpts["fp32"], "jetson", "fp16", tmp_path, force=True, **LOGITS)
    assert meta["verified"] is False and len(meta["verification_failures"]) == 1
    failure = meta["verification_failures"][0]
    assert failure["error"].startswith("the FP16 ONNX agrees with FP32 on ")
    assert failure["argmax_agreement"] == meta["verification"]["fp16_onnx"]["argmax_agreement"] < FLOAT_AGREEMENT
    assert (tmp_path / "jetson_fp16_os16_tensor-logits" / "model_fp16.onnx").is_file()
    # A sound export under --force is verified as usual.
    sound = _export(ckpts["fp32"], "onnx", "fp32", tmp_path, force=True)
    assert sound["verified"] is True and "verification_failures" not in sound

    from edgeseg.bench.results import load_results
    from edgeseg.report.analysis import row_label

    row = load_results(Path(__file__).parents[1] / "fixtures" / "results" / "jetson_orin_tensorrt.json")[0]
    assert row_label(dataclasses.replace(row, verified=False)) == row_label(row).replace(" TensorRT", " (NOT VERIFIED) TensorRT")


def test_jetson_fp16_gate_on_logits_beyond_fp16(tmp_path: Path) -> None:
    """Logits near 1e5 (a large common offset, class 3 ahead by 1): FP32 picks class 3 everywhere; in
    FP16 the offset is beyond its range (and its step there is ~8), so the classes tie."""
    model = _tiny_model()
    with torch.no_grad():
        _last_conv(model).bias += torch.tensor([1e5, 1e5, 1e5, 1e5 + 1])
    synthetic = {f"synthetic_{k}": v for k, v in SYNTH.items()}
    recipe = recipe_from_dict(
        {"name": "big", "model": {"width_mult": 0.35}, "data": {"format": "synthetic", **synthetic}, "export": {"input_size": list(SIZE)}}
    )
    save_checkpoint(tmp_path / "big.pt", model=model, recipe=recipe, classes=CLASSES)
    _export(tmp_path / "big.pt", "jetson", "fp32", tmp_path / "out")  # sound in FP32 (within FP32_TOLERANCE of PyTorch)
    with pytest.raises(NumericalError, match=rf"the FP16 ONNX agrees with FP32 on .* \(< {FLOAT_AGREEMENT:.1%}\)") as exc:
        _export(tmp_path / "big.pt", "jetson", "fp16", tmp_path / "out", **LOGITS)
    assert _measured(exc) < 0.5


# --- Core ML: verify_mlpackage (spec, metadata, int8 convs); prediction needs macOS -----------------


@pytest.fixture(scope="module")
def coreml_int8(ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """The sound INT8 package (export_coreml ran verify_mlpackage on it) and its meta."""
    out = tmp_path_factory.mktemp("coreml")
    meta = _export(ckpts["ptq"], "coreml", "int8", out)
    return out / "coreml_int8_os16" / CM.MODEL_FILE, meta


def test_coreml_sound_int8_package_passes(coreml_int8: tuple[Path, dict[str, Any]]) -> None:
    path, meta = coreml_int8
    info = CM.verify_mlpackage(path, meta, "int8")
    assert info["convs"] == info["convs_int8_weights"] == info["convs_int8_inputs"] > 60
    assert meta["coreml"]["convs_int8_weights"] == info["convs"] and meta["coreml"]["prediction_verified"] is False


COREML_MISMATCHES = [  # the package against a meta it does not match: what verify_mlpackage must say
    ("input-size", lambda m: m.update(input_size=[32, 64]), r"input 'image' is \{.*'height': 64, 'width': 64\}, expected an 64x32 image"),
    (
        "classes",
        lambda m: m["classes"].update(names=[*CLASSES.names, "person"]),
        r"output 'logits' is \{'shape': \[1, 4, 64, 64\], 'dtype': 'FLOAT32'\}, expected FLOAT32 of shape \[1, 5, 64, 64\]",
    ),
    ("class-names", lambda m: m["classes"].update(names=["sky", "road", "car", "bush"]), r"class names are missing from the metadata"),
]


@pytest.mark.parametrize(("change", "message"), [r[1:] for r in COREML_MISMATCHES], ids=[r[0] for r in COREML_MISMATCHES])
def test_coreml_spec_gate(coreml_int8: tuple[Path, dict[str, Any]], change: Callable[[dict[str, Any]], None], message: str) -> None:
    path, meta = coreml_int8
    wrong = {**meta, "classes": dict(meta["classes"])}
    change(wrong)
    with pytest.raises(TargetError, match=r"^Core ML package '.*' failed verification: .*; run with --verbose$") as exc:
        CM.verify_mlpackage(path, wrong, "int8")
    assert re.search(message, str(exc.value)), str(exc.value)


def test_coreml_int8_gate_on_a_float_conv(ckpts: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An INT8 package with one convolution left float (its weights not quantized) fails the export."""
    real = CM.qdq_view

    def one_float_conv(model: torch.nn.Module) -> torch.nn.Module:
        view = real(model)
        conv = next(m for m in view.modules() if type(m).__name__ == "QDQConv")
        conv.__class__ = torch.nn.Conv2d
        return view

    monkeypatch.setattr(CM, "qdq_view", one_float_conv)
    with pytest.raises(TargetError, match=r"failed verification: of (\d+) convs, (\d+) have int8 weights") as exc:
        _export(ckpts["ptq"], "coreml", "int8", tmp_path)
    convs, int8 = map(int, re.findall(r"of (\d+) convs, (\d+) have", str(exc.value))[0])
    assert int8 == convs - 1 and convs > 60
    assert not (tmp_path / "coreml_int8_os16").exists()


@pytest.mark.skipif(platform.system() != "Darwin", reason="Core ML prediction needs macOS (coremltools cannot run a model on Linux)")
def test_coreml_int8_prediction_agrees_with_torch(ckpts: dict[str, Path], coreml_int8: tuple[Path, dict[str, Any]]) -> None:
    """On a Mac: the package's predictions against the fake-quant model, at the INT8 gate."""
    from edgeseg.export.common import verification_images
    from edgeseg.train.checkpoint import load_checkpoint, model_from_checkpoint

    path, meta = coreml_int8
    images, _ = verification_images(meta, 4)
    got = CM.TARGET.load(path.parent, meta).runner.run(np.concatenate(images))
    model = model_from_checkpoint(load_checkpoint(ckpts["ptq"])).eval()
    model.set_input_size(SIZE)
    with torch.no_grad():
        ref = model(torch.from_numpy(np.concatenate(images))).numpy()
    assert argmax_agreement(got, ref) >= INT8_AGREEMENT
