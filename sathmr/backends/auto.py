"""The way in from what a user typed (``--model``, ``--backend``, ``--checkpoint``) to a running backend:
the format table (:mod:`sathmr.backends.formats`) picks the class, ultralytics' AutoBackend idea."""


from __future__ import annotations

from pathlib import Path

from sathmr.backends.base import Backend
from sathmr.backends.formats import ModelChoice, choose_model, format_of_backend, validate_options
from sathmr.common.errors import SathmrError
from sathmr.model.sathmr import SATHMR


def load_backend(name: str, *, checkpoint: str | Path | None = None, model_path: str | Path | None = None,
                 model: SATHMR | None = None, config: str | None = None, smpl_dir: str | Path | None = None,
                 device: str = "cpu", **options) -> Backend:
    """A backend by name: torch ones from a checkpoint (or an in-memory ``model``), ort/trt from an
    exported file (``checkpoint``/``config``, when given, must be the ones it was exported from).
    ``options`` are the backend's own (see ``FORMATS``); one its format would ignore is refused."""
    fmt = format_of_backend(name)
    validate_options(fmt, options, f"the {name} backend")
    cls = fmt.backend_class(name)
    if fmt.name == "checkpoint":
        return cls.from_checkpoint(checkpoint, config, smpl_dir, device, static=name == "torch-static",
                                            model=model, **options)
    if model_path is None:
        raise SathmrError(f"--backend {name} needs --model (an exported file; see `sathmr export`)")
    return cls.from_file(model_path, device=device, config=config, checkpoint=checkpoint, **options)


def open_model(model: str | Path | None = None, backend: str | None = None, *, checkpoint: str | Path | None = None,
               config: str | None = None, smpl_dir: str | Path | None = None, device: str = "cpu",
               **options) -> Backend:
    """The backend for a model spec: what every command (and ``sathmr serve``) calls.

    ``model``: a checkpoint (``.pth``/``.safetensors``), an export (two-stage folder, ``.onnx``,
    ``.engine``) or a registry name (``sat_644_3dpw``); None: the first official checkpoint in the
    weights folder, else the embedded default. ``backend`` overrides the one the file implies
    (``torch-static``). ``checkpoint`` is an alias of ``model`` for weights, or, next to an export,
    the weights it must come from. ``options`` go to the backend (``threads`` for ort, ``budget``
    for torch-static) and are refused where the format would ignore them.
    """
    choice = choose_model(model, backend, checkpoint)
    return load_backend(choice.backend, checkpoint=choice.checkpoint, model_path=choice.model_path, config=config,
                        smpl_dir=smpl_dir, device=device, **options)


def weights_behind(choices: dict[str, ModelChoice]) -> Path | None:
    """The weights the torch backends of a comparison run (:func:`sathmr.backends.formats.choose_models`): the ones
    given, else the embedded default when an export given was made from it (its metadata knows), else None
    (the default: weights/, else the embedded model)."""
    from sathmr.backends.meta import is_embedded, read_meta
    from sathmr.zoo.registry import EMBEDDED

    given = next((c.checkpoint for c in choices.values() if c.checkpoint is not None), None)
    if given is not None:
        return given
    exports = {c.model_path for c in choices.values() if c.model_path is not None}
    return EMBEDDED if any(is_embedded(read_meta(p)) for p in exports) else None

