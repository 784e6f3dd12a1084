"""`sathmr weights fetch`: a registry model into the weights folder, checked, resumable, never half there.

The transfer is huggingface_hub's (``get_hf_file_metadata`` for the size, commit and ETag, ``http_get``
for the bytes: progress bar, retries that resume with a Range request), so ``HF_ENDPOINT``,
``HF_TOKEN``, ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``HF_HUB_DISABLE_PROGRESS_BARS`` mean what they
mean for every Hub tool. What sathmr adds around it:

* the partial download lives in sathmr's cache (``<cache>/downloads``), keyed by the file's ETag, so
  an interrupted fetch resumes where it stopped the next time, and the destination never holds a
  partial file;
* the result is checked against the registry's sha256, else the one recorded at an earlier verified
  fetch, else the Hub's ETag (for a large file, the sha256 of its content), then moved into place in
  one ``os.replace``; a file that fails the check is deleted;
* a file already in the Hub cache (``hf download``) is taken from there, also offline.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers

from sathmr import __version__
from sathmr.common.errors import SathmrError
from sathmr.common.files import file_sha256
from sathmr.zoo.local import Records, cache_dir, weights_dir
from sathmr.zoo.registry import ModelEntry

#: what a failed transfer raises: OS errors, the Hub's own, and its HTTP client's base error (httpx or
#: requests, whichever this huggingface_hub is built on: HfHubHTTPError derives from it)
NETWORK_ERRORS = (OSError, OfflineModeIsEnabled, *HfHubHTTPError.__bases__)
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Remote:
    """What the server says about the file before any byte is transferred."""
    url: str                    # where the bytes are (after the Hub's redirect to its CDN)
    size: int | None
    sha256: str | None          # the Hub's ETag of an LFS/Xet file is the sha256 of its content
    source: str                 # for the record and the user: hf://repo@commit/path, or the URL
    commit: str | None = None
    hub: bool = True


@dataclass(frozen=True)
class Fetched:
    path: Path
    sha256: str
    size: int
    how: str                    # downloaded | resumed | from the Hub cache | already there
    check: str                  # what the sha256 was checked against


def offline() -> bool:
    return bool(constants.HF_HUB_OFFLINE)


def _endpoint() -> str | None:
    # read at call time (huggingface_hub reads it once, at import)
    return os.environ.get("HF_ENDPOINT", "").rstrip("/") or None


def _headers(hub: bool) -> dict[str, str]:
    # the token goes to the Hub only, never to a third-party URL
    return build_hf_headers(token=None if hub else False, library_name="sathmr", library_version=__version__)


def remote(entry: ModelEntry) -> Remote:
    """HEAD the entry's file (SathmrError, one line, when offline or unreachable)."""
    if entry.hub is not None:
        url = hf_hub_url(entry.hub.repo, entry.hub.path, revision=entry.hub.revision, endpoint=_endpoint())
    elif entry.url is not None:
        url = entry.url
    else:
        raise SathmrError(f"{entry.name} has no download source")
    where = url if entry.hub is None else f"{entry.hub.repo} ({url})"
    if offline():
        raise SathmrError(f"cannot fetch {entry.name}: offline (HF_HUB_OFFLINE is set) and not in the Hub cache")
    try:
        meta = get_hf_file_metadata(url, headers=_headers(entry.hub is not None), token=None if entry.hub else False)
    except NETWORK_ERRORS as exc:
        raise SathmrError(f"cannot fetch {entry.name} from {where}: {_first_line(exc)}") from None
    etag = (meta.etag or "").strip('"').lower()
    if entry.hub is None:
        return Remote(meta.location, meta.size, None, url, hub=False)
    source = f"hf://{entry.hub.repo}@{meta.commit_hash or entry.hub.revision}/{entry.hub.path}"
    return Remote(meta.location, meta.size, etag if SHA256.fullmatch(etag) else None, source, meta.commit_hash)


def hub_cached(entry: ModelEntry, revision: str | None = None) -> Path | None:
    """The file in the Hugging Face cache (``HF_HUB_CACHE``), when some Hub tool downloaded it already."""
    if entry.hub is None:
        return None
    hit = try_to_load_from_cache(entry.hub.repo, entry.hub.path, revision=revision or entry.hub.revision)
    return Path(hit) if isinstance(hit, str) else None


def part_file(entry: ModelEntry, rem: Remote) -> Path:
    """Where the partial download waits: one per file version, so a resume never mixes two versions."""
    key = rem.sha256 or hashlib.sha256(f"{rem.source} {rem.size}".encode()).hexdigest()
    return cache_dir() / "downloads" / f"{entry.filename}.{key[:16]}.part"


def download(entry: ModelEntry, rem: Remote) -> tuple[Path, bool]:
    """The bytes into the partial file, resuming it; returns (file, resumed)."""
    part = part_file(entry, rem)
    part.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.is_file() else 0
    if rem.size is not None and have > rem.size:      # not a prefix of this version: start over
        part.unlink()
        have = 0
    try:
        with open(part, "ab") as f:
            http_get(rem.url, f, resume_size=have, headers=_headers(rem.hub), expected_size=rem.size,
                     displayed_filename=entry.filename)
    except NETWORK_ERRORS as exc:
        got = part.stat().st_size if part.is_file() else 0
        raise SathmrError(f"download of {entry.name} failed after {got / 1e6:.1f} MB ({_first_line(exc)}); "
                          "run the command again to resume") from None
    return part, have > 0


def place(src: Path, target: Path, move: bool) -> None:
    """``src`` becomes ``target`` in one rename; from another file system, or a copy's source, through a
    temporary file beside the target that a failure removes."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if move:
        try:
            os.replace(src, target)
            return
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        try:
            os.link(src.resolve(), tmp)           # the Hub cache's blob: no second copy
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    if move:
        src.unlink()


def fetch(entry: ModelEntry, dest: str | Path | None = None, force: bool = False,
          records: Records | None = None) -> Fetched:
    """Get the entry's file into ``dest`` (default: the weights folder) and check it."""
    if entry.packaged is not None:
        raise SathmrError(f"{entry.name} ships inside the package ({entry.packaged}): nothing to fetch")
    records = records or Records()
    target = Path(dest if dest is not None else weights_dir()) / entry.filename
    expected, origin = records.reference(entry)
    if force and not entry.sha256:
        expected, origin = None, ""                  # --force accepts a new upstream version
    if target.is_file() and not force:
        return _already_there(entry, target, records, expected, origin)
    rem = None if offline() and hub_cached(entry) else remote(entry)   # offline and not cached: remote() says so
    cached = hub_cached(entry, rem.commit if rem is not None else None)
    if rem is not None:
        if entry.size is not None and rem.size is not None and rem.size != entry.size:
            raise SathmrError(f"{entry.name}: the server's file is {rem.size} bytes, the registry expects {entry.size}")
        if expected and rem.sha256 and rem.sha256 != expected:
            raise SathmrError(f"{entry.name}: the server's file (sha256 {rem.sha256[:12]}…) is not the one expected "
                              f"({expected[:12]}…, {origin})" + ("" if entry.sha256 else "; --force accepts it"))
    if cached is not None:
        src, how, move = cached, "from the Hub cache", False
        blob = cached.resolve().name                 # the Hub cache names a large file's blob by its sha256
        rem_sha = rem.sha256 if rem is not None else (blob if SHA256.fullmatch(blob) else None)
    else:
        src, resumed = download(entry, rem)
        how, move, rem_sha = ("resumed" if resumed else "downloaded"), True, rem.sha256
    sha = file_sha256(src)
    check, against = (expected, origin) if expected else (rem_sha, "the Hub's ETag")
    if check and sha != check:
        if move:
            src.unlink()
        raise SathmrError(f"checksum mismatch for {entry.name}: got sha256 {sha[:12]}…, expected {check[:12]}… "
                          f"({against})" + ("; the download was deleted, run the command again" if move else ""))
    size = src.stat().st_size
    place(src, target, move)
    if not expected:
        source = rem.source if rem is not None else f"hf://{entry.hub.repo}/{entry.hub.path} (Hub cache)"
        records.record(entry, sha, size, source, verified=check is not None)
    records.remember(target, sha)
    records.save()
    return Fetched(target, sha, size, how, against if check else "size only (no checksum published)")


def _already_there(entry: ModelEntry, target: Path, records: Records, expected: str | None, origin: str) -> Fetched:
    """An existing file is checked, not replaced: against what is known, else against the Hub's ETag."""
    sha, size = records.hash(target), target.stat().st_size
    if expected is None and entry.hub is not None and not offline():
        rem = remote(entry)
        if rem.sha256:
            expected, origin = rem.sha256, "the Hub's ETag"
            if sha == expected:
                records.record(entry, sha, size, rem.source)
    records.save()
    if expected is None:
        return Fetched(target, sha, size, "already there", "nothing: no checksum known (offline?)")
    if sha != expected:
        raise SathmrError(f"{target} exists but is not {entry.name} as expected (sha256 {sha[:12]}…, expected "
                          f"{expected[:12]}…, {origin}): --force replaces it")
    return Fetched(target, sha, size, "already there", origin)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
