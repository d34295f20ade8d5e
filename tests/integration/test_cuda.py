"""Training on an NVIDIA GPU: what runs on CUDA ends in the same artifacts as on the CPU.

Skipped without CUDA. On a GPU machine `fit` trains on CUDA by itself, so these check what only
happens there: autocast in bf16 (fp16 with loss scaling on GPUs without bf16), fake quantization
and calibration on CUDA tensors, checkpoints that load on a CPU-only machine and export to an INT8
ONNX that onnxruntime runs like the CUDA-trained model. Run on the device with
`pytest tests/integration/test_cuda.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edgeseg.config import Recipe, load_recipe
from edgeseg.data.dataset import eval_dataset
from edgeseg.export.onnx_export import export_onnx
from edgeseg.quant import fake_quant_channel, fake_quant_tensor
from edgeseg.train import fit
from edgeseg.train.checkpoint import load_checkpoint, model_from_checkpoint
from edgeseg.train.evaluate import amp_dtype, evaluate
from edgeseg.train.loop import Interrupted

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (torch.cuda.is_available() is False)"),
]

REPO = Path(__file__).resolve().parents[2]


def smoke(*overrides: str) -> Recipe:
    """recipes/smoke.yaml: synthetic scenes at 96x96, a 0.35-wide model, FP32 then QAT."""
    return load_recipe(REPO / "recipes" / "smoke.yaml", list(overrides))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("cuda_run")
    return out, fit(smoke(), out)


def test_fake_quant_on_cuda_equals_the_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(2, 8, 17, 19, generator=g) * 3, torch.randn(16, 8, 3, 3, generator=g)
    amax_x, amax_w = torch.tensor(4.0), w.abs().amax(dim=(1, 2, 3))
    assert torch.equal(fake_quant_tensor(x.cuda(), amax_x.cuda()).cpu(), fake_quant_tensor(x, amax_x))
    assert torch.equal(fake_quant_channel(w.cuda(), amax_w.cuda()).cpu(), fake_quant_channel(w, amax_w))
    # Under autocast the quantizer computes in float32 and hands back the autocast dtype.
    with torch.autocast("cuda", dtype=amp_dtype(torch.device("cuda"))):
        half = fake_quant_tensor(x.cuda().to(amp_dtype(torch.device("cuda"))), amax_x.cuda())
    assert half.dtype == amp_dtype(torch.device("cuda"))


def test_training_on_cuda_learns_and_writes_cpu_loadable_checkpoints(run: tuple[Path, dict[str, Any]]) -> None:
    out, results = run
    assert {"fp32.pt", "qat.pt", "best.pt", "last.pt"} <= {p.name for p in out.iterdir()}
    fp32 = load_checkpoint(out / "fp32.pt")
    # The CPU smoke recipe reaches ~80 mIoU on these scenes; chance over 6 classes is ~17.
    assert fp32["miou"] > 50, fp32["miou"]
    for name in ("fp32.pt", "best.pt"):
        ckpt = load_checkpoint(out / name)
        assert all(t.device.type == "cpu" for t in ckpt["model"].values() if isinstance(t, torch.Tensor))
    # The QAT model, re-evaluated on the CPU in FP32 simulation, scores what CUDA measured.
    best = load_checkpoint(out / "best.pt")
    model = model_from_checkpoint(best).eval()
    cpu = evaluate(model, eval_dataset(smoke()), device="cpu", amp=False)
    assert abs(cpu["miou"] - best["miou"]) < 2.0, (cpu["miou"], best["miou"])


def test_cuda_trained_qat_model_exports_to_int8_onnx_that_matches_cuda(tmp_path: Path, run: tuple[Path, dict[str, Any]]) -> None:
    import onnxruntime as ort

    out, _ = run
    model = model_from_checkpoint(load_checkpoint(out / "best.pt")).eval()
    model.set_input_size((96, 96))
    onnx_path = tmp_path / "model.onnx"
    export_onnx(model, onnx_path, input_size=(96, 96), meta={"precision": "int8"})
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    val = eval_dataset(smoke())
    cuda_model = model.cuda()
    agree = total = 0
    for i in range(len(val)):
        x = val[i][0][None].numpy().astype(np.float32)
        with torch.no_grad():
            ref = cuda_model(torch.from_numpy(x).cuda()).float().cpu().numpy()
        got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        agree += int((got.argmax(1) == ref.argmax(1)).sum())
        total += ref.shape[0] * ref.shape[2] * ref.shape[3]
    assert agree / total >= 0.99, agree / total


def test_fp16_loss_scaling_path_trains_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, interrupt_at) -> None:  # noqa: ANN001
    """GPUs without bf16 (Volta, Turing) train in fp16 with a GradScaler; forced here."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert amp_dtype(torch.device("cuda")) == torch.float16
    recipe = smoke("train.epochs=2", "train.eval_every=1", "quant.enabled=false")
    with pytest.raises(Interrupted):
        fit(recipe, tmp_path, callback=interrupt_at(5))
    last = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert last["iteration"] == 5 and last["grad_scaler"]["scale"] > 0  # --resume continues with this scale
    results = fit(recipe, tmp_path, resume=True)
    assert results["fp32"]["iters"] == 2 * 96 // 8
    assert results["fp32"]["best_miou"] > 20, results  # learning, not diverged (chance ~17)
