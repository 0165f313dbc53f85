"""Export a trained model for phones and edge devices: ONNX (ONNX Runtime, also on mobile) or
TorchScript (PyTorch Mobile / LibTorch), with the normalisation baked in.

The exported graph takes what a camera pipeline has after one resize: ``image``, a uint8 batch
shaped ``(N, S, S, 3)`` (RGB, channels last, the photo resized to the training size ``S``
with area interpolation, as :func:`lfa_ray.augment.resize` does) and returns ``logits``
``(N, 1, S, S)`` float32: the read window is ``logits > 0``, to be resized back to the photo.
"""

from __future__ import annotations

if __name__ == "__main__":  # python -m lfa_ray.export: the command, run before this copy defines anything,
    from lfa_ray.cli import export  # so the module's state exists once (as lfa_ray.export)

    raise SystemExit(export())

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from lfa_ray.augment import to_unit
from lfa_ray.errors import UserError
from lfa_ray.model import UNet

FORMATS = ("onnx", "torchscript")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}


class WithPreprocessing(nn.Module):
    """The UNET behind the training pipeline's normalisation: uint8 NHWC in, logits out."""

    def __init__(self, model: UNet):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # channels first, then the training pipeline's own normalisation (the original's x / 255)
        return self.model(to_unit(image.permute(0, 3, 1, 2)))


def export(checkpoint: str, out: str | Path, fmt: str, size: int | None = None) -> tuple[Path, int]:
    """Write the model of ``checkpoint`` (any ``--checkpoint`` form) as ``fmt`` to ``out`` for input
    ``size`` x ``size`` (default: its training size); returns the file written and the size."""
    from lfa_ray.checkpoint import load_model

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    model, trained, _ = load_model(checkpoint, torch.device("cpu"))
    size = size or trained
    levels = len(model.downs)
    if size < 2 ** levels:
        raise UserError(f"--size {size}: too small for the model's {levels} levels; use at least {2 ** levels}")
    out = Path(out)
    if not out.name.endswith(SUFFIX[fmt]):
        out = out.with_name(out.name + SUFFIX[fmt])
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapped = WithPreprocessing(model).eval()
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)  # not 1: torch.export fixes a size-1 batch
    tmp = out.with_name(out.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporters' notes on traced shape checks and deprecations
        if fmt == "onnx":
            _onnx(wrapped, example, tmp)
        else:
            torch.jit.trace(wrapped, example).save(str(tmp))
    tmp.replace(out)  # atomic: a failed export leaves no half-written model
    return out, size


def load_exported(path: str | Path) -> Callable[[np.ndarray], np.ndarray]:
    """An exported model (ONNX through ONNX Runtime, TorchScript through torch.jit), loaded once, as a
    function from a uint8 batch ``(N, S, S, 3)`` to its logits."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda images: session.run(None, {"image": images})[0]
    scripted = torch.jit.load(str(path)).eval()

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return scripted(torch.from_numpy(images)).numpy()
    return run


def run_exported(path: str | Path, images: np.ndarray) -> np.ndarray:
    return load_exported(path)(images)


def agreement(checkpoint: str, exported: str | Path, images: np.ndarray) -> float:
    """The share of pixels whose mask (logits > 0) the exported model and PyTorch agree on."""
    from lfa_ray.checkpoint import load_model

    model, _, _ = load_model(checkpoint, torch.device("cpu"))
    with torch.no_grad():
        ours = WithPreprocessing(model).eval()(torch.from_numpy(images)).numpy()
    return float(((run_exported(exported, images) > 0) == (ours > 0)).mean())


def _onnx(wrapped: nn.Module, example: torch.Tensor, path: Path) -> None:
    try:
        import onnxscript  # noqa: F401 - torch's exporter needs it
    except ImportError:
        raise UserError("ONNX export needs onnx and onnxscript: pip install 'lfa_ray[export]'") from None
    batch = torch.export.Dim("batch", min=1, max=4096)
    exporter = logging.getLogger("torch.onnx")
    level = exporter.level
    exporter.setLevel(logging.ERROR)  # notes on operators this model does not use (torchvision's)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter's step-by-step progress lines
            program = torch.onnx.export(wrapped, (example,), input_names=["image"], output_names=["logits"],
                                        dynamic_shapes={"image": {0: batch}}, dynamo=True, verbose=False)
    finally:
        exporter.setLevel(level)
    program.save(str(path))

