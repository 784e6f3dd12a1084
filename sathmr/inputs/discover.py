"""Which files an ``--input`` names: one file, a folder tree, a glob pattern or a list file.

Folders are walked recursively in sorted order: hidden files and folders are skipped, symlinked folders
are followed but a link back into its own ancestry (a loop) is reported and skipped, and so is a folder
that cannot be read and every entry the system refuses to stat (a link to itself: ELOOP). Every file gets a *name*, its path relative to the input without the suffix
("a/x" for ``a/x.jpg``), which output paths mirror, so ``a/x.jpg`` and ``b/x.jpg`` never collide.
Problems are returned as entries with an error, so a caller can report them and carry on.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sathmr.common.errors import SathmrError

LIST_SUFFIXES = (".txt", ".lst")   # an --input with one of these suffixes lists paths, one per line
DEFAULT_MAX_PIXELS = 250_000_000    # a 200-megapixel phone photo passes; decoding it takes ~0.6 GB (sathmr.inputs.images)
GLOB_CHARS = "*?["                 # an --input that does not exist and has one of these is a pattern


@dataclass
class Found:
    """One input file with its unique output name, or a problem (``error`` set, ``path`` where it is)."""
    path: Path
    name: str
    error: str | None = None


def find_inputs(spec: str | Path, suffixes: Sequence[str], exclude: Iterable[str | Path] = ()) -> list[Found]:
    """The files ``spec`` names, in a deterministic order, with unique names.

    ``suffixes`` (lower case) select files inside folders; a single file, a listed file or a glob match
    is taken whatever its suffix. Folders in ``exclude`` (e.g. the output folder) are never entered.
    """
    spec = str(spec)
    path = Path(spec)
    walker = _Walker(tuple(s.lower() for s in suffixes), {os.path.realpath(p) for p in exclude})
    if path.is_dir():
        walker.walk(path, PurePosixPath())
        if not walker.found:
            raise SathmrError(f"no images or videos in {path} or its subfolders (looked for {', '.join(suffixes)})")
        return _unique(walker.found)
    if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
        entries, missing = _read_list(path)
    elif path.exists():
        return [Found(path, path.stem)]
    elif any(c in spec for c in GLOB_CHARS):
        entries, missing = [Path(p) for p in sorted(glob.glob(spec, recursive=True))], []
        if not entries:
            raise SathmrError(f"no files match the pattern {spec!r}")
    else:
        raise SathmrError(f"input not found: {path}")
    base = Path(os.path.commonpath([os.path.abspath(p if p.is_dir() else p.parent) for p in entries])) if entries else None
    for p in entries:
        rel = PurePosixPath(Path(os.path.abspath(p)).relative_to(base).as_posix())
        if p.is_dir():
            walker.walk(p, rel)
        else:
            walker.found.append(Found(p, str(rel.with_suffix("")) if rel.suffix else str(rel)))
    return missing + _unique(walker.found)


class _Walker:
    def __init__(self, suffixes: tuple[str, ...], exclude: set[str]) -> None:
        self.suffixes, self.exclude = suffixes, exclude
        self.found: list[Found] = []
        self._chain: list[str] = []      # real paths of the folders being walked (loop detection)

    def walk(self, folder: Path, rel: PurePosixPath) -> None:
        real = os.path.realpath(folder)
        if real in self.exclude:
            return
        if real in self._chain:
            self.found.append(Found(folder, str(rel), f"symlink loop: {folder} leads back to {real}; skipped"))
            return
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self.found.append(Found(folder, str(rel), f"cannot read folder {folder}: {exc.strerror or exc}; skipped"))
            return
        self._chain.append(real)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path, sub = Path(entry.path), rel / entry.name
            try:
                self._entry(entry, path, sub)
            except OSError as exc:            # e.g. a link to itself (ELOOP): this entry only
                self.found.append(Found(path, str(sub), f"cannot read {path}: {exc.strerror or exc}; skipped"))
        self._chain.pop()

    def _entry(self, entry: os.DirEntry, path: Path, sub: PurePosixPath) -> None:
        if entry.is_dir():
            self.walk(path, sub)
        elif Path(entry.name).suffix.lower() in self.suffixes:
            if entry.is_file():
                self.found.append(Found(path, str(sub.with_suffix(""))))
            else:
                self.found.append(Found(path, str(sub), f"not a readable file (broken link?): {path}"))


def _read_list(list_file: Path) -> tuple[list[Path], list[Found]]:
    """Paths listed one per line (blank lines and ``#`` comments ignored), relative to the list's folder."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SathmrError(f"cannot read the list file {list_file}: {exc}") from None
    entries, missing = [], []
    for line in (s.strip() for s in lines):
        if not line or line.startswith("#"):
            continue
        p = Path(line) if os.path.isabs(line) else list_file.parent / line
        if p.exists():
            entries.append(p)
        else:
            missing.append(Found(p, line, f"listed in {list_file} but not found: {p}"))
    if not entries and not missing:
        raise SathmrError(f"the list file {list_file} names no paths")
    return entries, missing


def _unique(found: list[Found]) -> list[Found]:
    """Disambiguate names that only differ by suffix (x.jpg, x.png → x, x_png)."""
    seen: set[str] = set()
    for f in found:
        if f.error:
            continue
        name = f.name
        if name in seen:
            name = f"{f.name}_{f.path.suffix[1:].lower()}"
            k = 2
            while name in seen:
                name, k = f"{f.name}_{f.path.suffix[1:].lower()}{k}", k + 1
        seen.add(name)
        f.name = name
    return found
