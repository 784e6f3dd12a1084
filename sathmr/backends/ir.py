"""The sathmr metadata of an OpenVINO IR file, read without OpenVINO.

`sathmr export --format openvino` stores the same string pairs every ONNX graph carries
(``ExportMeta.to_props``) as one JSON value in the model's ``rt_info`` (``<rt_info><sathmr value=…/>``
in the ``.xml``). Reading them back needs only the XML — not OpenVINO, not the ``.bin`` weights — so
``sathmr.backends.meta`` can tell what a folder holds, and refuse a damaged or foreign one, before any
runtime is imported.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from sathmr.common.errors import SathmrError

IR_SUFFIX = ".xml"                 # each graph is <name>.xml (topology, metadata) + <name>.bin (weights)
RT_INFO_KEY = "sathmr"             # the rt_info entry holding the JSON of ExportMeta.to_props


def ir_props(path: Path) -> dict[str, str]:
    """The sathmr metadata of ``path`` (an IR ``.xml``); a file without it is refused in one line."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise SathmrError(f"{path} is not a readable OpenVINO IR ({exc})") from None
    node = root.find(f"rt_info/{RT_INFO_KEY}") if root.tag == "net" else None
    if node is None:
        raise SathmrError(f"{path} is not an OpenVINO IR written by `sathmr export --format openvino` (no sathmr metadata)")
    try:
        props = json.loads(node.get("value", ""))
    except ValueError:
        props = None
    if not isinstance(props, dict) or not all(isinstance(v, str) for v in props.values()):
        raise SathmrError(f"{path} has damaged sathmr metadata; re-export it")
    weights = path.with_suffix(".bin")
    if not weights.is_file():
        raise SathmrError(f"{path}: its weights {weights.name} are missing beside it; re-export the folder")
    return props
