"""The device side runs without PyTorch: every target module imports, and `edgeseg bench` measures
an ONNX artifact end to end (latency and mIoU), with torch made unimportable."""

from __future__ import annotations

import importlib.util
import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeseg.export.base import TARGETS
from edgeseg.export.meta import META_SCHEMA_VERSION

BLOCK_TORCH = "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_torch_is_really_blocked(tmp_path: Path) -> None:
    result = _python("import torch", tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "ModuleNotFoundError: import of torch halted; None in sys.modules"


@pytest.mark.parametrize("name", list(TARGETS))
def test_target_device_side_imports_without_torch(name: str, tmp_path: Path) -> None:
    code = (
        "from edgeseg.export.base import get_target\n"
        f"t = get_target({name!r})\n"
        "print(t.name, t.runtime, t.can_run_here()[0])\n"
        "import edgeseg.export.meta, edgeseg.bench.runners, edgeseg.bench.measure, edgeseg.report\n"
    )
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == name


def _identity_onnx(path: Path, classes: int = 3) -> None:
    """A 1x1 convolution that copies its 3 input channels to 3 logits (no torch involved)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = np.eye(classes, 3, dtype=np.float32).reshape(classes, 3, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["logits"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes, 32, 32])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))


def _argmax_data(tmp_path: Path) -> Path:
    """Data whose mask is the argmax of the normalised image: an identity model scores 100 mIoU."""
    from PIL import Image

    data = tmp_path / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
    (data / "classes.txt").write_text("r\ng\nb\n")
    rng = np.random.default_rng(0)
    for i in range(3):
        label = rng.integers(0, 3, (32, 32))
        image = np.zeros((32, 32, 3), np.uint8)
        image[np.arange(32)[:, None], np.arange(32)[None], label] = 255
        Image.fromarray(image).save(data / "images" / f"f{i}.png")
        Image.fromarray(label.astype(np.uint8)).save(data / "masks" / f"f{i}.png")
    return data


def _meta(target: str, model_file: str, data: Path) -> dict[str, object]:
    return {
        "schema_version": META_SCHEMA_VERSION,
        "target": target,
        "precision": "fp32",
        "model_file": model_file,
        "input_name": "input",
        "output_name": "logits",
        "input_size": [32, 32],
        "output_stride": 16,
        "classes": {"names": ["r", "g", "b"], "colors": [[255, 0, 0], [0, 255, 0], [0, 0, 255]], "ignore_index": 255},
        "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        "data": {"format": "folder", "root": str(data), "split": "all"},
        "quant": None,
        "source_checkpoint": None,
        "source_checkpoint_sha256": None,
        "recipe_hash": None,
        "tool_versions": {},
    }


def test_bench_runs_an_onnx_artifact_without_torch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    art = tmp_path / "onnx_fp32_os16"
    art.mkdir()
    _identity_onnx(art / "model.onnx")
    data = _argmax_data(tmp_path)
    (art / "meta.json").write_text(json.dumps(_meta("onnx", "model.onnx", data)))
    out = tmp_path / "results.json"
    argv = ["edgeseg", "bench", str(art), "--json", str(out), "--runs", "3", "--warmup", "1", "--data", str(data), "--format", "folder"]
    result = _python(f"from edgeseg.cli import main; sys.argv = {argv!r}; main()", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    (row,) = json.loads(out.read_text())["rows"]
    assert row["runtime"] == "onnxruntime" and row["target"] == "onnx"
    assert row["miou"] == pytest.approx(100.0)


@pytest.mark.parametrize("name", list(TARGETS))
def test_target_declares_what_the_rest_derives(name: str) -> None:
    """bench, pipeline, report and the CLI read these from the target: each must be coherent."""
    import tomllib

    from edgeseg.export.base import PRECISIONS, get_target, runtime_labels
    from edgeseg.pipeline import variants

    t = get_target(name)
    assert t.name == name
    assert t.precisions and set(t.precisions) <= set(PRECISIONS)
    assert t.variants and all(p in t.precisions for p, _ in t.variants)
    assert {v.target for v in variants()} >= {name}
    extras = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert t.extra in extras, f"pyproject.toml has no extra '{t.extra}' for target {name}"
    assert runtime_labels()[t.runtime] == t.runtime_label
    assert t.can_run_here() == _runs_here(name)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _missing(module: str, extra: str) -> tuple[bool, str]:
    return False, f'{module} is not installed; install it with: pip install "edgeseg[{extra}]"'


def _runs_here(name: str) -> tuple[bool, str]:
    """What each target's can_run_here must say on this machine, from what the machine has."""
    if name == "onnx":
        return (True, "") if _installed("onnxruntime") else _missing("onnxruntime", "onnx")
    if name == "openvino":
        return (True, "") if _installed("openvino") else _missing("openvino", "openvino")
    if name == "jetson":
        why = 'TensorRT needs an NVIDIA GPU with tensorrt installed (JetPack\'s on a Jetson, or pip install "edgeseg[tensorrt]")'
        return (True, "") if _installed("tensorrt") else (False, why)
    if name == "coreml":
        if platform.system() != "Darwin":
            return False, "Core ML prediction needs macOS"
        return (True, "") if _installed("coremltools") else _missing("coremltools", "coreml")
    raise AssertionError(f"a new target '{name}': add what its can_run_here says on this machine to _runs_here")


class _IdentityRunner:
    static_batch = None

    def run(self, x: np.ndarray) -> np.ndarray:
        return x.copy()


class _FakeTarget:
    """A new runtime, written as a user would add one: this class and one TARGETS line."""

    name, runtime, runtime_label, extra = "fake", "fakert", "Fake RT", "onnx"
    precisions = ("fp32",)
    variants: tuple[tuple[str, str | None], ...] = (("fp32", None),)
    precision_hints = ("fake-f32",)

    def is_available(self) -> tuple[bool, str]:
        return True, ""

    def can_run_here(self) -> tuple[bool, str]:
        return True, ""

    def describe(self, meta: dict[str, object], folder: Path | None) -> str:
        return "checked by hand"

    def export(self, request: object, out: Path) -> dict[str, object]:
        raise NotImplementedError

    def load(self, artifact: Path, meta: dict[str, object], *, threads: int | None = None, precision_hint: str | None = None) -> object:
        from edgeseg.export.base import Loaded

        return Loaded(_IdentityRunner(), self.runtime, "1.0", "host", precision_hint, None)


def test_a_new_target_is_one_module_and_one_table_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    from edgeseg.bench.measure import BenchOptions, bench_artifact
    from edgeseg.bench.results import runtime_label
    from edgeseg.export.base import runtime_labels
    from edgeseg.pipeline import runs_here, variants

    module = types.ModuleType("edgeseg_fake_target")
    module.TARGET = _FakeTarget()  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "edgeseg_fake_target", module)
    monkeypatch.setitem(TARGETS, "fake", "edgeseg_fake_target")  # the one table line
    # Everything else derives from the table: the pipeline's variants, report labels, bench.
    assert ("fake", "fp32", None) in {(v.target, v.precision, v.ptq) for v in variants()}
    assert runtime_labels()["fakert"] == "Fake RT" and runtime_label("fakert") == "Fake RT"
    assert runs_here("fake") == (True, "")
    art = tmp_path / "fake_fp32_os16"
    art.mkdir()
    (art / "model.bin").write_bytes(b"weights")
    data = _argmax_data(tmp_path)
    (art / "meta.json").write_text(json.dumps(_meta("fake", "model.bin", data)))
    row = bench_artifact(art, BenchOptions(runs=2, warmup=0, precision_hint="fake-f32"))
    assert (row.target, row.runtime, row.provider, row.precision_hint) == ("fake", "fakert", "host", "fake-f32")
    assert row.miou == pytest.approx(100.0) and row.label == "FP32 Fake RT"


@pytest.mark.parametrize("major", [12, 13])
def test_cuda_extras_pin_one_cuda_major(major: int) -> None:
    """jetson-cuN / tensorrt-cuN install the cuda-python of CUDA N only (JetPack 6 is CUDA 12,
    JetPack 7 CUDA 13), and the x86 one the TensorRT wheel built for it."""
    import tomllib

    extras = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name in (f"jetson-cu{major}", f"tensorrt-cu{major}"):
        assert f"cuda-python>={major},<{major + 1}" in extras[name]
        assert ("onnx>=1.16" in extras[name]) and not any(d.startswith("tensorrt") for d in extras[name] if name.startswith("jetson"))
    assert any(d.startswith(f"tensorrt-cu{major}>=") for d in extras[f"tensorrt-cu{major}"])
