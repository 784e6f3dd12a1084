"""What a model file is and which backend runs it: the one table behind ``--model``, ``--backend`` and
``sathmr export --format`` (ultralytics' ``export_formats`` idea, with exact suffix matching).

``--model PATH`` alone is enough: SAT-HMR weights (``.pth``/``.safetensors``) run on PyTorch, an ONNX
export (a two-stage folder or a static ``.onnx``) on ONNX Runtime, a TensorRT export (a folder of
``.engine`` files or one ``.engine``) on TensorRT, an OpenVINO export (a folder of ``.xml`` + ``.bin``) on
OpenVINO. A registry name (``sat_644_3dpw``) stands for its
file in the weights folder. ``--backend`` overrides the choice among the backends of that format
(``torch-static``), and backend options a format would ignore are refused, not dropped.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import click

from sathmr.common.errors import SathmrError

STAGES = ("scale_map", "tokens")     # the graphs of a two-stage export (sathmr.backends.meta.STAGES is this)
DEFAULT_OPSET = 18                   # of `sathmr export` (sathmr.backends.meta.DEFAULT_OPSET is this)
DEFAULT_TRT_MAX_BATCH = 1            # largest batch of a TensorRT engine's profiles by default (larger batches run in chunks)
TRT_ACTIVATION_BUDGET_GB = 8.0       # what one attention-score tensor may take at a TensorRT profile's maxima (sathmr.export.trt)


#: the precision names, defined once; each format's row lists the ones it runs
PRECISIONS: dict[str, str] = {
    "fp32": "float32 everywhere (the reference)",
    "bf16": "bfloat16 in stages B/C (PyTorch autocast; CPUs with AVX512-BF16/AMX, GPUs)",
    "fp16": "float16 in stages B/C (GPUs)",
    "int8": "int8 weights in the tokens graph (ONNX Runtime dynamic quantisation or NNCF weight compression, CPUs)",
}


@dataclass(frozen=True)
class BackendRow:
    name: str          # --backend value
    cls: str           # "module:Class", imported when the backend is opened (engines load lazily)
    what: str


@dataclass(frozen=True)
class Format:
    """Everything about one model format: how a file of it is recognised, which backend classes run it and
    with which options and precisions, and which ``sathmr export`` options write it."""
    name: str
    suffixes: tuple[str, ...]               # a file of this format ends in exactly one of these
    folder_suffix: str | None               # a two-stage export folder: scale_map<suffix> + tokens<suffix>
    backends: tuple[BackendRow, ...]        # the first is the default
    options: tuple[str, ...]                # backend options that mean something for it
    precisions: tuple[str, ...]             # what its backends run (names of PRECISIONS; the first is the default)
    gpu: bool                               # needs a CUDA device
    export_as: str | None                   # `sathmr export --format` value that writes it
    export_options: tuple[str, ...]         # `sathmr export` options only this format takes
    what: str

    def __post_init__(self) -> None:
        unknown = set(self.precisions) - set(PRECISIONS)
        if unknown:
            raise ValueError(f"format {self.name}: unknown precisions {sorted(unknown)}")

    @property
    def backend_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.backends)

    def backend_class(self, backend: str) -> type:
        """The class that runs ``backend`` (imported now: torch and the engine load with it)."""
        module, cls = next(b.cls for b in self.backends if b.name == backend).split(":")
        return getattr(importlib.import_module(module), cls)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("checkpoint", (".pth", ".safetensors"), None,
           (BackendRow("torch", "sathmr.backends.torch_backend:TorchBackend", "PyTorch, dynamic token set (the reference)"),
            BackendRow("torch-static", "sathmr.backends.torch_backend:TorchBackend",
                       "PyTorch with the fixed token budgets of the static graph")),
           ("budget", "info", "precision", "compile", "allow_emulated"), ("fp32", "bf16", "fp16"), False, None, (),
           "SAT-HMR weights (official .pth or sathmr .safetensors)"),
    # an export runs at the precision it was exported with: --precision there only confirms it (checked)
    Format("onnx", (".onnx",), ".onnx", (BackendRow("ort", "sathmr.backends.ort_backend:OrtBackend",
                                                    "ONNX Runtime on an exported model"),),
           ("threads", "precision"), ("fp32", "fp16", "int8"), False, "onnx", ("portable",),
           "an ONNX export (`sathmr export`)"),
    Format("engine", (".engine",), ".engine", (BackendRow("trt", "sathmr.backends.trt_backend:TrtBackend",
                                                          "TensorRT on a built engine"),),
           ("precision",), ("fp32", "fp16"), True, "trt", ("onnx_path", "workspace_gb", "max_batch_size", "max_tokens"),
           "a TensorRT export (`sathmr export --format trt`)"),
    Format("openvino", (".xml",), ".xml", (BackendRow("openvino", "sathmr.backends.openvino_backend:OpenVinoBackend",
                                                      "OpenVINO on a converted model (CPU; Intel GPUs)"),),
           ("threads", "precision", "performance_hint"), ("fp32", "int8"), False, "openvino", ("onnx_path",),
           "an OpenVINO export (`sathmr export --format openvino`)"),
)}
#: backend → (runs an exported file, what it is); the CLI's --backend choices
BACKENDS: dict[str, tuple[bool, str]] = {b.name: (f.name != "checkpoint", b.what) for f in FORMATS.values() for b in f.backends}
EXPORT_FORMATS = tuple(f.export_as for f in FORMATS.values() if f.export_as)
#: every format's own export options (`sathmr export` refuses one the chosen format does not list)
EXPORT_ONLY = tuple(dict.fromkeys(o for f in FORMATS.values() for o in f.export_options))


def formats_taking(option: str) -> list[Format]:
    """The formats whose ``sathmr export`` takes ``option`` (for the refusal that names them)."""
    return [f for f in FORMATS.values() if option in f.export_options]


def export_format(name: str) -> Format:
    """The row that ``sathmr export --format name`` writes."""
    return next(f for f in FORMATS.values() if f.export_as == name)


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
                          f", .engine or .xml): see `sathmr export`")
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
    from sathmr.zoo.local import locate
    from sathmr.zoo.weights import checkpoint_path  # at call time: the CLI's options import this module

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


def choose_models(models: tuple[str, ...], backends: list[str], checkpoint: str | Path | None = None) -> dict[str, ModelChoice]:
    """Several backends on the same model (bench, parity): each backend gets the ``--model`` of its format.

    A torch backend runs the weights given (a weights ``--model`` or ``--checkpoint``; None: the default,
    or what the caller finds an export was made from); an exported backend runs the export of its format
    given, or None (bench exports one on the fly, parity refuses). Every export given is checked against
    the weights (``checkpoint`` of its choice) when it is loaded.
    """
    for b in backends:
        format_of_backend(b)                                   # unknown names fail before any file is looked at
    given = [choose_model(m) for m in models]
    weights = [c.checkpoint for c in given if c.format.name == "checkpoint"]
    if checkpoint is not None:
        from sathmr.zoo.weights import checkpoint_path

        weights.append(checkpoint_path(checkpoint))
    if len(weights) > 1:
        raise SathmrError(f"two sets of weights given ({', '.join(map(str, weights))}): give one")
    ckpt = weights[0] if weights else None
    out: dict[str, ModelChoice] = {}
    for b in backends:
        fmt = format_of_backend(b)
        exports = [c.model_path for c in given if c.format is fmt and fmt.name != "checkpoint"]
        if len(exports) > 1:
            raise SathmrError(f"two {fmt.what}s given for {b} ({', '.join(map(str, exports))}): give one")
        out[b] = ModelChoice(b, fmt, ckpt, exports[0] if exports else None)
    unused = [c.model_path for c in given if c.format.name != "checkpoint" and
              not any(o.model_path == c.model_path for o in out.values())]
    if unused:
        raise SathmrError(f"--model {unused[0]}: no --backend given runs it ({', '.join(backends)}); add "
                          f"{detect(unused[0]).backend_names[0]}")
    return out


MODEL_HELP = ("What to run: SAT-HMR weights (.pth/.safetensors), an export (two-stage folder, .onnx, .engine) or a "
              "name from `sathmr models`; it implies the backend. Default: the first official checkpoint in "
              "weights/, else the embedded model.")


def model_options(command=None, *, several: bool = False, backend_default: str | None = None):
    """``-m/--model``, ``--backend`` (an override of what the model implies) and ``--checkpoint`` (an alias of
    ``--model`` for weights; next to an export, the weights it must have been made from), the same in every
    command. ``several`` (bench, parity): ``--model`` repeatable (weights and exports side by side) and
    ``--backend`` a comma list of the backends to compare."""
    def decorate(cmd):
        cmd = click.option("--checkpoint", default=None, help="Alias of --model for weights; next to an exported "
                           "--model, the weights it must have been exported from.")(cmd)
        if several:
            cmd = click.option("--backend", "backend_text", default=backend_default, show_default=True,
                               help=f"Comma-separated backends to compare ({', '.join(BACKENDS)}); each runs the "
                                    "--model of its format (torch: the weights; an exported one: the export).")(cmd)
            return click.option("--model", "-m", "model_paths", multiple=True,
                                help=MODEL_HELP + " Repeat to give weights and exports side by side.")(cmd)
        cmd = click.option("--backend", type=click.Choice(list(BACKENDS)), default=None, help="Override the backend "
                           "the model implies (torch-static: weights with fixed token budgets).")(cmd)
        return click.option("--model", "-m", "model_path", default=None, help=MODEL_HELP)(cmd)
    return decorate(command) if command is not None else decorate
