"""What a model file is and which backend runs it: the one table behind ``--model``, ``--backend`` and
``sathmr export --format`` (ultralytics' ``export_formats`` idea, with exact suffix matching).

``--model PATH`` alone is enough: SAT-HMR weights (``.pth``/``.safetensors``) run on PyTorch, an ONNX
export (a two-stage folder or a static ``.onnx``) on ONNX Runtime, a TensorRT export (a folder of
``.engine`` files or one ``.engine``) on TensorRT. A registry name (``sat_644_3dpw``) stands for its
file in the weights folder. ``--backend`` overrides the choice among the backends of that format
(``torch-static``), and backend options a format would ignore are refused, not dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click

from sathmr.errors import SathmrError
from sathmr.export.meta import STAGES
from sathmr.weights import checkpoint_path
from sathmr.zoo.local import locate


@dataclass(frozen=True)
class Format:
    name: str
    suffixes: tuple[str, ...]               # a file of this format ends in exactly one of these
    folder_suffix: str | None               # a two-stage export folder: scale_map<suffix> + tokens<suffix>
    backends: tuple[tuple[str, str], ...]   # (backend, what it is); the first is the default
    options: tuple[str, ...]                # backend options that mean something for it
    gpu: bool                               # needs a CUDA device
    export_as: str | None                   # `sathmr export --format` value that writes it
    what: str

    @property
    def backend_names(self) -> tuple[str, ...]:
        return tuple(b for b, _ in self.backends)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("checkpoint", (".pth", ".safetensors"), None,
           (("torch", "PyTorch, dynamic token set (the reference)"),
            ("torch-static", "PyTorch with the fixed token budgets of the static graph")),
           ("budget", "info", "precision", "compile", "allow_emulated"), False, None,
           "SAT-HMR weights (official .pth or sathmr .safetensors)"),
    # an export runs at the precision it was exported with: --precision there only confirms it (checked)
    Format("onnx", (".onnx",), ".onnx", (("ort", "ONNX Runtime on an exported model"),),
           ("threads", "precision"), False, "onnx", "an ONNX export (`sathmr export`)"),
    Format("engine", (".engine",), ".engine", (("trt", "TensorRT on a built engine"),),
           ("precision",), True, "trt", "a TensorRT export (`sathmr export --format trt`)"),
)}
#: backend → (runs an exported file, what it is); the CLI's --backend choices
BACKENDS: dict[str, tuple[bool, str]] = {b: (f.name != "checkpoint", what) for f in FORMATS.values() for b, what in f.backends}
EXPORT_FORMATS = tuple(f.export_as for f in FORMATS.values() if f.export_as)


def format_of_backend(backend: str) -> Format:
    for f in FORMATS.values():
        if backend in f.backend_names:
            return f
    raise SathmrError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")


def detect(path: Path) -> Format:
    """The format of a model file or folder, from its exact suffix (a folder: from the graphs it holds)."""
    if path.is_dir():
        for f in FORMATS.values():
            if f.folder_suffix and all((path / f"{g}{f.folder_suffix}").is_file() for g in STAGES):
                return f
        raise SathmrError(f"{path} is a folder but not a two-stage export (no {' + '.join(g + '.onnx' for g in STAGES)}"
                          f" or .engine): see `sathmr export`")
    for f in FORMATS.values():
        if path.suffix in f.suffixes:
            return f
    known = ", ".join(s for f in FORMATS.values() for s in f.suffixes)
    raise SathmrError(f"{path}: unknown model file type {path.suffix or '(no suffix)'!r}; known: {known}, or an export folder")


def validate_options(fmt: Format, options: dict, source: str = "this model") -> None:
    """Refuse a backend option the format would ignore (``threads`` for PyTorch weights, ``budget`` for ONNX)."""
    bad = sorted(k for k, v in options.items() if v is not None and k not in fmt.options)
    if bad:
        flags = ", ".join("--" + k.replace("_", "-") for k in bad)
        allowed = ", ".join(fmt.options) or "none"
        raise SathmrError(f"{flags}: not an option for {source} ({fmt.what}); its options: {allowed}")


@dataclass(frozen=True)
class ModelChoice:
    """What a model spec comes to: the backend, and the file(s) it is built from."""
    backend: str
    format: Format
    checkpoint: Path | None     # the weights (torch backends; None: the default), or what an export must come from
    model_path: Path | None     # the export (ort, trt)


def choose_model(model: str | Path | None = None, backend: str | None = None,
                 checkpoint: str | Path | None = None) -> ModelChoice:
    """Resolve ``--model``/``--backend``/``--checkpoint`` without loading anything.

    ``model`` is a path or registry name, and decides the backend unless ``backend`` is given.
    ``checkpoint`` is an alias of ``model`` for weights; next to an exported ``model`` it names the
    weights the export must have been made from (checked on load).
    """
    exported = backend is not None and format_of_backend(backend).name != "checkpoint"   # unknown names fail here
    if model is None and checkpoint is not None and not exported:
        model, checkpoint = checkpoint, None     # --checkpoint alone: the alias of --model
    if model is None:
        if exported:
            fmt = format_of_backend(backend)
            given = f" ({checkpoint} is {FORMATS['checkpoint'].what}: export it with `sathmr export`)" if checkpoint else ""
            raise SathmrError(f"--backend {backend} runs {fmt.what}: pass it with --model{given}")
        return ModelChoice(backend or "torch", FORMATS["checkpoint"], None, None)
    path = locate(model, "checkpoint" if Path(model).suffix in FORMATS["checkpoint"].suffixes else "model")
    fmt = detect(path)
    backend = backend or fmt.backend_names[0]
    if backend not in fmt.backend_names:
        raise SathmrError(f"--backend {backend} runs {format_of_backend(backend).what}, but {path} is {fmt.what}; "
                          f"it runs on: {', '.join(fmt.backend_names)}")
    if fmt.name == "checkpoint":
        if checkpoint is not None:
            raise SathmrError(f"two sets of weights given ({model} and --checkpoint {checkpoint}): give one")
        return ModelChoice(backend, fmt, checkpoint_path(path), None)
    return ModelChoice(backend, fmt, None if checkpoint is None else checkpoint_path(checkpoint), path)


MODEL_HELP = ("What to run: SAT-HMR weights (.pth/.safetensors), an export (two-stage folder, .onnx, .engine) or a "
              "name from `sathmr models`; it implies the backend. Default: the first official checkpoint in "
              "weights/, else the embedded model.")


def model_options(command):
    """``--model``, ``--backend`` (an override) and ``--checkpoint`` (an alias), the same in every command."""
    command = click.option("--checkpoint", default=None, help="Alias of --model for weights; next to an exported "
                           "--model, the weights it must have been exported from.")(command)
    command = click.option("--backend", type=click.Choice(list(BACKENDS)), default=None, help="Override the backend "
                           "the model implies (torch-static: weights with fixed token budgets).")(command)
    return click.option("--model", "model_path", default=None, help=MODEL_HELP)(command)
