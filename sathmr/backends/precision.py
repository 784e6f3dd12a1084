"""The precision switch: what ``--precision`` means for each backend, and what a machine refuses.

PyTorch backends run ``fp32`` (the reference), ``bf16`` or ``fp16`` in stages B and C — the ViT blocks on
the selected tokens, ~80 % of the FLOPs — under autocast (``SATHMR.forward(reduced=...)``). Stage A (level-1
patch embedding, the extra blocks, ``enc_inter_norm``, the scale head) and the token selection always run
in float32, so the token set never depends on the precision; so do the decoder and the heads, which are
cheap but cause most of the reduced-precision error (``sathmr.model.sathmr.precision_scopes``), and SMPL
and post-processing. An exported model
carries its own precision (``fp32``, ``fp16``, ``int8``: ``sathmr export --precision fp16|int8``), so for
ort/trt ``--precision`` can only confirm it.

A precision the hardware has no kernels for is never flipped silently: fp16 on a CPU fails in one line;
bf16 on a CPU without AVX512-BF16/AMX (or a GPU without bf16 tensor cores) fails in one line where speed is
the point (``sathmr infer``, the default of :func:`plan_precision`) and runs *emulated*, with a warning
and the label ``bf16 (emulated)`` on every figure, where accuracy is the point (parity, eval, bench).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import click

from sathmr.backends.formats import FORMATS, PRECISIONS
from sathmr.common.errors import SathmrError

if TYPE_CHECKING:       # torch is imported where a precision is applied, so the CLI's options load without it
    import torch

#: what the PyTorch backends run (the reduced ones apply to stages B/C), read from the format table
TORCH_PRECISIONS = FORMATS["checkpoint"].precisions
#: precisions an exported model can have
EXPORT_PRECISIONS = tuple(p for p in PRECISIONS if any(p in f.precisions for f in FORMATS.values() if f.export_as))
ALL_PRECISIONS = tuple(PRECISIONS)
TORCH_BACKENDS = FORMATS["checkpoint"].backend_names
#: backend → the precisions it runs (bench's ``BACKEND:PRECISION`` entries)
BACKEND_PRECISIONS = {b: f.precisions for f in FORMATS.values() for b in f.backend_names}
DTYPE_NAMES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}   # autocast dtype of stages B/C (torch.<name>)


@dataclass(frozen=True)
class PrecisionPlan:
    """The precision a PyTorch backend runs at, and whether the hardware only emulates it."""
    name: str = "fp32"
    emulated: str | None = None     # why the kernels are emulated (accuracy checks only); None = native

    @property
    def dtype(self) -> torch.dtype | None:
        """The autocast dtype of stages B/C (None: plain float32, no autocast at all)."""
        import torch

        name = DTYPE_NAMES[self.name]
        return None if name is None else getattr(torch, name)

    @property
    def label(self) -> str:
        return f"{self.name} (emulated)" if self.emulated else self.name

    def describe(self) -> str:
        if self.name == "fp32":
            return "precision fp32"
        return (f"precision {self.label}: stages B/C in {self.name} (autocast); stage A, the token selection, the "
                "decoder, the heads and SMPL in fp32")


def plan_precision(precision: str, device: torch.device | str, allow_emulated: bool = False) -> PrecisionPlan:
    """Check ``precision`` against the device. Emulated bf16 is refused unless ``allow_emulated`` (then it
    warns, and the plan's label says so); fp16 on a CPU is always refused."""
    import torch

    from sathmr.common.hardware import not_native

    device = torch.device(device)
    if precision not in TORCH_PRECISIONS:
        hint = " (int8 is an exported model: `sathmr export --precision int8`, then --backend ort)" if precision == "int8" else ""
        raise SathmrError(f"--precision {precision}: the torch backends run {', '.join(TORCH_PRECISIONS)}{hint}")
    why = not_native(precision, device)
    if why is None:
        return PrecisionPlan(precision)
    if device.type == "cpu" and precision == "fp16":
        raise SathmrError(f"--precision fp16 on the CPU: {why}")
    if not allow_emulated:
        raise SathmrError(f"--precision {precision} on {device}: {why}; use --precision fp32 here (`sathmr parity`, "
                          "`sathmr eval` and `sathmr bench` run it emulated to measure its accuracy)")
    warnings.warn(f"--precision {precision} runs EMULATED: {why}. Its accuracy figures hold; its speed is not "
                  "what hardware with native support gets", stacklevel=2)
    return PrecisionPlan(precision, emulated=why)


def check_export_precision(requested: str | None, found: str, source: str) -> None:
    """An exported model runs at the precision it was exported with; ``--precision`` may only confirm it."""
    if requested is not None and requested != found:
        raise SathmrError(f"--precision {requested}: {source} is a {found} export, and an exported model runs at "
                          "its own precision (export another with `sathmr export --precision fp16|int8`)")


def parse_precisions(text: str | None) -> list[str | None]:
    """``--precision bf16,fp16`` → ['bf16', 'fp16']; none given → [None] (the backend's own)."""
    names = [p.strip() for p in (text or "").split(",") if p.strip()]
    bad = [p for p in names if p not in ALL_PRECISIONS]
    if bad:
        raise SathmrError(f"--precision: unknown {', '.join(bad)}; choose from {', '.join(ALL_PRECISIONS)}")
    return names or [None]


def precision_kwargs(precision: str | None = None, compile: bool = False, allow_emulated: bool = False,
                     backend: str | None = None) -> dict:
    """The backend keywords of a command's ``--precision`` / ``--compile``: only what was asked for, so
    that a backend that cannot honour it refuses it (``sathmr.backends.formats.validate_options``: ``--compile``
    on an export) instead of ignoring it. ``allow_emulated`` (parity, eval, bench: accuracy is the point)
    reaches the torch backends only; ``backend`` is the one the model implies (None: torch)."""
    opts: dict = {}
    if precision is not None:
        opts["precision"] = precision
    if compile:
        opts["compile"] = True
    if allow_emulated and (backend or "torch") in TORCH_BACKENDS:
        opts["allow_emulated"] = True
    return opts


PRECISION_HELP = {
    "speed": "torch: fp32 (default), bf16 (CPUs with AVX512-BF16/AMX, GPUs) or fp16 (GPUs) after the token selection; "
             "an export: its own precision (checked; `sathmr export --precision fp16|int8` makes others).",
    "accuracy": "torch: fp32 (default), bf16 or fp16 after the token selection (bf16 runs emulated on CPUs without it: "
                "the figures hold, the speed does not); an export: its own precision (checked).",
    "list": "Comma-separated precisions (fp32,bf16,fp16,int8), compared side by side (bf16 runs emulated on CPUs "
            "without it: the accuracy figures hold).",
}


def precision_options(purpose: str = "speed", compile: bool = True):
    """``--precision`` (and ``--compile``) next to a command's model options; ``purpose`` "accuracy" where
    emulated bf16 is allowed (eval), "speed" where it is refused (infer), "list" for a comma list (bench,
    parity: the text is parsed by :func:`sathmr.backends.precision.parse_precisions`)."""
    def decorate(command):
        if compile:
            command = click.option("--compile", "compile_", is_flag=True,
                                   help="torch: run the network through torch.compile (the first images compile it; "
                                        "off by default).")(command)
        if purpose == "list":
            return click.option("--precision", "precision_text", default=None, help=PRECISION_HELP[purpose])(command)
        return click.option("--precision", type=click.Choice(ALL_PRECISIONS), default=None,
                            help=PRECISION_HELP[purpose])(command)
    return decorate
