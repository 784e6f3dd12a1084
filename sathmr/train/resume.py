"""Resuming a run from its last complete ``checkpoints/step_N`` folder, or one line saying why not.

A resumed run repeats the uninterrupted one exactly only if every piece of state comes back: weights,
optimizer, schedule, progress and the random generators. Accelerate skips an unreadable RNG state with
an info log (the run then silently diverges) and lets a damaged optimizer or schedule file fail with a
long traceback; here each file is read first, and a damaged or missing one is a :class:`SathmrError`
naming the step folder, the file and ``--no-resume``. The files are loaded with ``weights_only``
(accelerate's ``load``), so a hostile one runs no code.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import torch
from accelerate.utils import RNG_STATE_NAME
from accelerate.utils import load as accelerate_load
from safetensors import SafetensorError

from sathmr.common.errors import SathmrError

#: what reading a damaged state file raises (torch.load: pickle/zip errors; safetensors; json)
DAMAGED = (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, TypeError, AttributeError,
           OSError, SafetensorError, zipfile.BadZipFile)
RNG_KEYS = ("random_state", "numpy_random_seed", "torch_manual_seed")
PROGRESS_KEYS = ("epoch", "step_in_epoch", "global_step")


def damaged(folder: Path, name: str, exc: BaseException | str) -> SathmrError:
    why = exc if isinstance(exc, str) else f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
    return SathmrError(f"cannot resume from {folder}: {name} is damaged ({why}); delete that step folder to "
                       "resume from an earlier one, or pass --no-resume to start over")


def _read(folder: Path, name: str, loader):
    path = folder / name
    if not path.is_file():
        raise damaged(folder, name, "missing")
    try:
        return loader(path)
    except DAMAGED as exc:
        raise damaged(folder, name, exc) from None


def _progress(path: Path) -> dict:
    state = json.loads(path.read_text())
    if not isinstance(state, dict) or not all(isinstance(state.get(k), int) and state[k] >= 0 for k in PROGRESS_KEYS):
        raise ValueError(f"needs non-negative integers {', '.join(PROGRESS_KEYS)}")
    return state


def _rng(path: Path) -> dict:
    states = accelerate_load(path)
    missing = [k for k in RNG_KEYS if not isinstance(states, dict) or k not in states]
    if missing:
        raise KeyError(f"no {', '.join(missing)}")
    return states


def _unreadable_zip(folder: Path) -> str | None:
    """The first torch file of the folder whose archive fails its own checksums (None: all read)."""
    for f in sorted(folder.glob("*.bin")):
        try:
            with zipfile.ZipFile(f) as z:
                if z.testzip() is None:
                    continue
        except (zipfile.BadZipFile, OSError, EOFError):
            pass
        return f.name
    return None


def resume_state(acc, sched, folder: Path) -> dict:
    """Load everything saved in ``folder`` into ``acc`` (model, optimizer, RNG) and ``sched``; returns
    the progress (epoch, step_in_epoch, global_step)."""
    state = _read(folder, "progress.json", _progress)
    _read(folder, f"{RNG_STATE_NAME}_{acc.process_index}.pkl", _rng)     # accelerate would skip a bad one
    sched_state = _read(folder, "sched.pt", lambda p: torch.load(p, map_location="cpu", weights_only=True))
    try:
        acc.load_state(str(folder))
    except DAMAGED as exc:
        raise damaged(folder, _unreadable_zip(folder) or "the model or optimizer state", exc) from None
    try:
        sched.load_state_dict(sched_state)
    except DAMAGED as exc:
        raise damaged(folder, "sched.pt", exc) from None
    return state
