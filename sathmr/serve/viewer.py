"""The page's 3D viewer: Google's ``<model-viewer>`` web component, from the npm registry.

The repository holds none of its code. ``sathmr serve --install-viewer`` (or ``npm install
@google/model-viewer`` anywhere, then ``--viewer-dir``/``SATHMR_VIEWER_DIR`` naming that
``node_modules``) brings the package, whose ``dist/model-viewer.min.js`` is a self-contained build
(three.js included, no CDN at run time); the server hands out that one file. Without it the page still
shows the overlay, the scores and the token counts, and says how to get the 3D view.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sathmr.common.errors import SathmrError
from sathmr.zoo.weights import cache_dir

VIEWER_SPEC = "@google/model-viewer@4.4.0"              # the version the page and its browser test use
VIEWER_FILE = Path("@google/model-viewer/dist/model-viewer.min.js")


def default_viewer_dir() -> Path:
    """Where ``--install-viewer`` puts it: ``SATHMR_VIEWER_DIR``, else ``<cache>/viewer/node_modules``."""
    env = os.environ.get("SATHMR_VIEWER_DIR")
    return Path(env) if env else cache_dir() / "viewer" / "node_modules"


def find_viewer(node_modules: str | Path | None = None) -> Path | None:
    """The viewer script in ``node_modules`` (default :func:`default_viewer_dir`), or None."""
    script = Path(node_modules or default_viewer_dir()) / VIEWER_FILE
    return script if script.is_file() else None


def install_viewer(node_modules: str | Path | None = None, timeout: float = 300) -> Path:
    """``npm install`` the viewer into ``node_modules`` (its parent is npm's prefix); returns the script."""
    node_modules = Path(node_modules or default_viewer_dir())
    if node_modules.name != "node_modules":
        raise SathmrError(f"the viewer folder must be a node_modules folder, got {node_modules}")
    npm = shutil.which("npm")
    if npm is None:
        raise SathmrError("npm (Node.js) is needed to install the 3D viewer (@google/model-viewer); install "
                          "Node.js, or npm-install the package elsewhere and pass --viewer-dir")
    node_modules.parent.mkdir(parents=True, exist_ok=True)
    cmd = [npm, "install", "--prefix", str(node_modules.parent), "--no-audit", "--no-fund", "--loglevel", "error",
           VIEWER_SPEC]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SathmrError(f"npm install {VIEWER_SPEC} did not finish within {timeout:.0f} s (offline?)") from None
    script = find_viewer(node_modules)
    if proc.returncode != 0 or script is None:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise SathmrError(f"npm install {VIEWER_SPEC} failed (exit {proc.returncode}): {last[0]}")
    return script
