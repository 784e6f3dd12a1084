"""What of the registry is on this machine: where each file is, and whether it was verified.

A file counts as *verified* when its sha256 equals the registry's, or the one recorded when
`sathmr weights fetch` checked a download against the Hub. Hashing an 875 MB checkpoint takes seconds,
so a file's hash is remembered with its size and modification time (``<cache>/zoo.json``) and
recomputed only when the file changes or when asked (``sathmr models --verify``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from safetensors import SafetensorError, safe_open

from sathmr.common.errors import SathmrError
from sathmr.common.files import atomic_write, file_sha256
from sathmr.model.config import ModelConfig
from sathmr.zoo.registry import MODELS, ModelEntry, get_entry

#: local states: shipped in the package; sha256 equal to a checked reference; equal to a checksum recorded
#: from a size-checked download only; not hashed yet; hashed, nothing to compare with; different; missing
STATES = ("packaged", "verified", "recorded", "unchecked", "no reference", "MISMATCH", "absent")


def weights_dir() -> Path:
    """The user's model folder: ``$SATHMR_WEIGHTS``, else ``./weights``."""
    return Path(os.environ.get("SATHMR_WEIGHTS", "weights"))


def cache_dir() -> Path:
    """sathmr's own cache: ``$SATHMR_CACHE``, else ``$XDG_CACHE_HOME/sathmr`` (``~/.cache/sathmr``)."""
    base = os.environ.get("SATHMR_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "sathmr")
    return Path(base)


def records_path() -> Path:
    return cache_dir() / "zoo.json"


class Records:
    """Checksums recorded on first verified use (``models``) and hashes of files seen (``files``)."""

    def __init__(self, path: Path | None = None):
        self.path = path or records_path()
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            data = {}
        except ValueError:           # a damaged cache is rebuilt, never trusted
            data = {}
        self.models: dict[str, dict] = data.get("models", {})
        self.files: dict[str, dict] = data.get("files", {})
        self.dirty = False

    def save(self) -> None:
        """Write what changed (nothing written when nothing was learnt: a read-only cache is fine)."""
        if self.dirty:
            atomic_write(self.path, json.dumps({"models": self.models, "files": self.files}, indent=1).encode())
            self.dirty = False

    def known_hash(self, path: Path) -> str | None:
        """The file's sha256 if it was hashed before and has not changed since."""
        seen = self.files.get(str(path.resolve()))
        st = path.stat()
        if seen and seen["size"] == st.st_size and seen["mtime_ns"] == st.st_mtime_ns:
            return seen["sha256"]
        return None

    def hash(self, path: Path) -> str:
        known = self.known_hash(path)
        return known if known else self.remember(path, file_sha256(path))

    def remember(self, path: Path, sha256: str) -> str:
        st = path.stat()
        self.files[str(path.resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}
        self.dirty = True
        return sha256

    def record(self, entry: ModelEntry, sha256: str, size: int, source: str, verified: bool = True) -> None:
        """Remember the checksum of a fetched file for an entry the registry has none for; ``verified``:
        it was checked against the server's (else only its size was)."""
        self.models[entry.name] = {"sha256": sha256, "size": size, "source": source, "verified": verified,
                                   "recorded": time.strftime("%Y-%m-%d %H:%M:%S")}
        self.dirty = True

    def reference(self, entry: ModelEntry) -> tuple[str | None, str]:
        """(expected sha256, where the expectation comes from)."""
        if entry.sha256:
            return entry.sha256, "registry"
        rec = self.models.get(entry.name)
        if rec:
            how = "checked against the server" if rec.get("verified") else "size-checked only"
            return rec["sha256"], f"recorded {rec['recorded']} from {rec['source']}, {how}"
        return None, ""

    def verified_reference(self, entry: ModelEntry) -> bool:
        return bool(entry.sha256) or bool(self.models.get(entry.name, {}).get("verified"))


@dataclass
class LocalState:
    entry: ModelEntry
    path: Path | None
    status: str                 # one of STATES
    sha256: str | None = None
    detail: str = ""


def candidates(entry: ModelEntry, root: Path | None = None) -> list[Path]:
    """Where the entry's file may be: ``weights/<file>``, or the original release's ``weights/<subdir>/<file>``."""
    if entry.packaged is not None:
        return [entry.packaged]
    root = weights_dir() if root is None else Path(root)
    return [root / entry.filename] + ([root / entry.subdir / entry.filename] if entry.subdir else [])


def find_local(entry: ModelEntry, root: Path | None = None) -> Path | None:
    return next((p for p in candidates(entry, root) if p.is_file()), None)


def packaged_config(entry: ModelEntry) -> ModelConfig | None:
    """The config a packaged (sathmr-format) file carries in its metadata, without loading the weights."""
    try:
        with safe_open(str(entry.packaged), "pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError):
        return None
    return ModelConfig.from_json(meta["config"]) if "config" in meta else None


def check(entry: ModelEntry, records: Records, path: Path | None = None, rehash: bool = False) -> LocalState:
    """The entry's local state; hashes the file only when it changed since last seen and ``rehash``."""
    path = path or find_local(entry)
    if path is None:
        return LocalState(entry, None, "absent", detail=_how_to_get(entry))
    if entry.packaged is not None:
        return LocalState(entry, path, "packaged", records.hash(path))
    sha = records.hash(path) if rehash else records.known_hash(path)
    if sha is None:
        return LocalState(entry, path, "unchecked", detail="not hashed yet: `sathmr models --verify`")
    ref, origin = records.reference(entry)
    if ref is None:
        return LocalState(entry, path, "no reference", sha,
                          f"no checksum known: `sathmr weights fetch {entry.name}` checks it against the Hub"
                          if entry.hub else "no checksum known")
    if sha != ref:
        return LocalState(entry, path, "MISMATCH", sha, f"sha256 {sha[:12]}… differs from {ref[:12]}… ({origin})")
    return LocalState(entry, path, "verified" if records.verified_reference(entry) else "recorded", sha, origin)


def _how_to_get(entry: ModelEntry) -> str:
    if entry.hub is not None:
        return f"`sathmr weights fetch {entry.name}`"
    return f"download {entry.url} into {weights_dir()}/" if entry.url else "not packaged in this install"


def model_file(name: str) -> Path:
    """The local file of a registry model (SathmrError saying how to get it when absent)."""
    entry = get_entry(name)
    path = find_local(entry)
    if path is None:
        where = " or ".join(str(p) for p in candidates(entry))
        raise SathmrError(f"model {entry.name} is not on this machine (looked for {where}): {_how_to_get(entry)}")
    return path


def locate(spec: str | Path, what: str = "model") -> Path:
    """A model named by path (file or folder) or by registry name → its path on this machine.

    A path that exists wins over a registry name; a bare word that is neither gets the registry's
    did-you-mean error, anything else "<what> not found"."""
    path = Path(spec)
    if path.exists():
        return path
    text = str(spec)
    if text in MODELS or any(e.filename == text for e in MODELS.values()):
        return model_file(text)
    if not path.suffix and len(path.parts) == 1:
        get_entry(text)              # raises: unknown model, with close matches
    raise SathmrError(f"{what} not found: {spec} (not a file or folder here, nor a model name: see `sathmr models`)")


def default_checkpoint() -> Path | None:
    """The first official checkpoint present in the weights folder, in registry order (sat_644 first)."""
    official = (e for e in MODELS.values() if e.kind == "checkpoint" and e.hub is not None)
    return next((p for p in map(find_local, official) if p is not None), None)
