"""One reader per training/evaluation dataset of spec §6, all yielding the same :class:`ImageRecord`.

A reader knows where a dataset keeps its annotation npz and images and how its per-image annotation is
laid out; it turns that into world-frame SMPL parameters plus extrinsics and intrinsics. Everything
that depends on augmentation (camera-frame GT, projections, boxes) is the pipeline's job.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sathmr.common.errors import SathmrError
from sathmr.train.data.annots_io import load_annots

NUM_BETAS = 10


@dataclass
class ImageRecord:
    """One image and its people, exactly as annotated (world frame + extrinsics).

    ``intrinsics`` is (3,3) for datasets with one camera per image and (n,3,3) for the NeuralAnnot
    datasets (COCO, MPII, CrowdPose) that fit one camera per person.
    """
    img_path: Path
    ds: str
    intrinsics: np.ndarray
    global_orient: np.ndarray           # (n,3) axis-angle, world frame
    body_pose: np.ndarray               # (n,69)
    betas: np.ndarray                   # (n,10)
    transl: np.ndarray                  # (n,3) world-frame SMPL translation
    cam_rot: np.ndarray                 # (n,3,3) world → camera rotation
    cam_trans: np.ndarray               # (n,3)
    genders: list[str]                  # 'neutral' | 'male' | 'female' per person
    valid_3d: bool
    detect_all_people: bool
    rotate_cw: bool = False             # BEDLAM close-ups are stored rotated
    kid: np.ndarray | None = None       # AGORA kid flags (metrics only)

    @property
    def num_people(self) -> int:
        return len(self.betas)

    def person_intrinsics(self) -> np.ndarray:
        """(n,3,3) intrinsics, one per person."""
        k = np.asarray(self.intrinsics, dtype=np.float64)
        return np.broadcast_to(k, (self.num_people, 3, 3)).copy() if k.ndim == 2 else k.copy()

    def image_intrinsics(self) -> np.ndarray:
        """One (3,3) matrix for the image: the shared one, or the first person's for per-person datasets."""
        k = np.asarray(self.intrinsics, dtype=np.float64)
        if k.ndim == 2:
            return k.copy()
        return k[0].copy() if len(k) else np.eye(3)


# --------------------------------------------------------------------------- value coercion helpers
def as_array(value: Any, dtype: type = np.float64) -> np.ndarray:
    """numpy array from a numpy array, torch tensor or nested list."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _rows(value: Any, n_cols: int, n_rows: int | None = None) -> np.ndarray:
    """Per-person rows of width n_cols (extra columns, e.g. BEDLAM's 11th beta, are dropped)."""
    arr = as_array(value)
    if n_rows is not None:
        arr = arr.reshape(n_rows, -1)
    elif arr.ndim == 1:
        arr = arr.reshape(1, -1)
    else:
        arr = arr.reshape(arr.shape[0], -1)
    if arr.shape[1] < n_cols:
        raise ValueError(f"expected at least {n_cols} values per person, got {arr.shape[1]}")
    return arr[:, :n_cols]


def _repeat(mat: Any, n: int, shape: tuple[int, ...]) -> np.ndarray:
    """One camera matrix repeated for n people (3DPW/H36M store one extrinsic per image)."""
    arr = as_array(mat).reshape(shape)
    return np.broadcast_to(arr, (n, *shape)).copy()


def _gender(value: Any) -> str:
    """3DPW convention: 'f' / 'female' → female, anything else → male."""
    return "female" if str(value).lower() in ("f", "female") else "male"


def _intrinsics_from_focal(focal: Any, princpt: Any) -> np.ndarray:
    fx, fy = as_array(focal).reshape(-1)[:2]
    cx, cy = as_array(princpt).reshape(-1)[:2]
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def _empty_record(img_path: Path, ds: str, k: np.ndarray, **flags: Any) -> dict:
    return dict(img_path=img_path, ds=ds, intrinsics=k, global_orient=np.zeros((0, 3)),
                body_pose=np.zeros((0, 69)), betas=np.zeros((0, NUM_BETAS)), transl=np.zeros((0, 3)),
                cam_rot=np.zeros((0, 3, 3)), cam_trans=np.zeros((0, 3)), genders=[], **flags)


# --------------------------------------------------------------------------- per-dataset parsers
def _parse_agora(ann: dict, img_path: Path) -> ImageRecord:
    valid = [bool(v) for v in np.asarray(ann["isValid"]).reshape(-1)]
    keep = [i for i, v in enumerate(valid) if v]
    smpl = [ann["smpl_gt"][i] for i in keep]
    n = len(keep)
    if not n:
        return ImageRecord(**_empty_record(img_path, "agora", as_array(ann["cam_intrinsics"]).reshape(3, 3),
                                           valid_3d=True, detect_all_people=True))
    kid = np.asarray(ann["kid"]).reshape(-1)[keep].astype(bool) if "kid" in ann else None
    return ImageRecord(
        img_path=img_path, ds="agora",
        intrinsics=as_array(ann["cam_intrinsics"]).reshape(3, 3),
        global_orient=np.stack([as_array(p["global_orient"]).reshape(-1)[:3] for p in smpl]),
        body_pose=np.stack([as_array(p["body_pose"]).reshape(-1)[:69] for p in smpl]),
        betas=np.stack([as_array(p["betas"]).reshape(-1)[:NUM_BETAS] for p in smpl]),
        transl=np.stack([as_array(p["transl"]).reshape(-1)[:3] for p in smpl]),
        cam_rot=np.stack([as_array(ann["cam_rot"][i]).reshape(3, 3) for i in keep]),
        cam_trans=np.stack([as_array(ann["cam_trans"][i]).reshape(3) for i in keep]),
        genders=["neutral"] * n, valid_3d=True, detect_all_people=True, kid=kid,
    )


def _parse_bedlam(ann: dict, img_path: Path) -> ImageRecord:
    n = len(ann["shape"])
    pose = _rows(ann["pose_world"], 72, n) if n else np.zeros((0, 72))
    return ImageRecord(
        img_path=img_path, ds="bedlam",
        intrinsics=as_array(ann["cam_int"]).reshape(3, 3),
        global_orient=pose[:, :3], body_pose=pose[:, 3:72],
        betas=_rows(ann["shape"], NUM_BETAS, n) if n else np.zeros((0, NUM_BETAS)),
        transl=_rows(ann["trans_world"], 3, n) if n else np.zeros((0, 3)),
        cam_rot=as_array(ann["cam_rot"]).reshape(n, 3, 3),
        cam_trans=as_array(ann["cam_trans"]).reshape(n, 3),
        genders=["neutral"] * n, valid_3d=True, detect_all_people=True,
        rotate_cw="closeup" in img_path.name,
    )


def _neuralannot_parser(ds: str, detect_all_people: bool) -> Callable[[Any, Path], ImageRecord]:
    """COCO / MPII / CrowdPose: a list of persons with camera-frame SMPL and a camera each."""

    def parse(ann: Any, img_path: Path) -> ImageRecord:
        persons = list(ann)
        n = len(persons)
        if not n:
            return ImageRecord(**_empty_record(img_path, ds, np.zeros((0, 3, 3)), valid_3d=False,
                                               detect_all_people=detect_all_people))
        pose = np.stack([as_array(p["smpl_param"]["pose"]).reshape(-1)[:72] for p in persons])
        return ImageRecord(
            img_path=img_path, ds=ds,
            intrinsics=np.stack([_intrinsics_from_focal(p["cam_param"]["focal"], p["cam_param"]["princpt"])
                                 for p in persons]),
            global_orient=pose[:, :3], body_pose=pose[:, 3:],
            betas=np.stack([as_array(p["smpl_param"]["shape"]).reshape(-1)[:NUM_BETAS] for p in persons]),
            transl=np.stack([as_array(p["smpl_param"]["trans"]).reshape(-1)[:3] for p in persons]),
            cam_rot=np.broadcast_to(np.eye(3), (n, 3, 3)).copy(), cam_trans=np.zeros((n, 3)),
            genders=["neutral"] * n, valid_3d=False, detect_all_people=detect_all_people,
        )

    return parse


def _tensor_parser(ds: str, gendered: bool, detect_all_people: bool) -> Callable[[Any, Path], ImageRecord]:
    """H36M / 3DPW: one camera per image and per-image tensors of N people."""

    def parse(ann: dict, img_path: Path) -> ImageRecord:
        betas = _rows(ann["betas"], NUM_BETAS)
        n = len(betas)
        if gendered:
            raw = ann["genders"] if "genders" in ann else ann["gender"]
            raw = [raw] * n if isinstance(raw, (str, bytes)) else list(raw)
            genders = [_gender(g.decode() if isinstance(g, bytes) else g) for g in raw]
            if len(genders) != n:
                raise ValueError(f"{len(genders)} genders for {n} people")
        else:
            genders = ["neutral"] * n
        return ImageRecord(
            img_path=img_path, ds=ds,
            intrinsics=as_array(ann["cam_intrinsics"]).reshape(3, 3),
            global_orient=_rows(ann["global_orient"], 3, n), body_pose=_rows(ann["body_pose"], 69, n),
            betas=betas, transl=_rows(ann["transl"], 3, n),
            cam_rot=_repeat(ann["cam_rot"], n, (3, 3)), cam_trans=_repeat(ann["cam_trans"], n, (3,)),
            genders=genders, valid_3d=True, detect_all_people=detect_all_people,
        )

    return parse


# --------------------------------------------------------------------------- dataset layouts
@dataclass(frozen=True)
class DatasetLayout:
    folder: str                          # sub-folder of dataset_root
    annots: dict[str, str]               # split → annotation file (relative to folder)
    images: dict[str, str]               # split → image folder (relative to folder); '' = folder itself
    parse: Callable[[Any, Path], ImageRecord]


LAYOUTS: dict[str, DatasetLayout] = {
    "agora": DatasetLayout(
        "agora",
        {"train": "smpl_neutral_annots/annots_smpl_train_fit.npz",
         "validation": "smpl_neutral_annots/annots_smpl_validation.npz"},
        {"train": "train", "validation": "validation", "test": "test"}, _parse_agora),
    "bedlam": DatasetLayout(
        "bedlam",
        {s: f"bedlam_smpl_{s}.npz" for s in ("train_1fps", "train_6fps", "validation_6fps")},
        {"train_1fps": "train", "train_6fps": "train", "validation_6fps": "validation"}, _parse_bedlam),
    "coco": DatasetLayout("coco", {"train": "COCO_small_NA_SMPL.npz"}, {"train": "train2017"},
                          _neuralannot_parser("coco", True)),
    "mpii": DatasetLayout("mpii", {"train": "MPII_NA_SMPL.npz"}, {"train": "images"},
                          _neuralannot_parser("mpii", False)),
    "crowdpose": DatasetLayout("crowdpose", {"train": "CP_NA_SMPL_train.npz"}, {"train": "images"},
                               _neuralannot_parser("crowdpose", False)),
    "h36m": DatasetLayout("h36m", {"train": "annots_smpl_train_small.npz"}, {"train": ""},
                          _tensor_parser("h36m", gendered=False, detect_all_people=True)),
    "3dpw": DatasetLayout(
        "3dpw", {s: f"annots_smpl_{s}_genders.npz" for s in ("train", "test")}, {"train": "", "test": ""},
        _tensor_parser("3dpw", gendered=True, detect_all_people=False)),
}


class DatasetReader:
    """Random access to the images of one dataset split, parsed lazily into :class:`ImageRecord`."""

    def __init__(self, root: str | Path, name: str, split: str) -> None:
        check_split(root, name, split)
        layout = LAYOUTS[name]
        self.name, self.split, self.layout = name, split, layout
        base = Path(root) / layout.folder
        self.image_dir = base / layout.images[split] if layout.images[split] else base
        if split in layout.annots:
            self.annot_path: Path | None = base / layout.annots[split]
            self.annots: dict = load_annots(self.annot_path)
            self.names = list(self.annots)
        else:   # AGORA test: no GT, the image list is read from the folder
            self.annot_path, self.annots = None, {}
            if not self.image_dir.is_dir():
                raise SathmrError(f"image folder not found: {self.image_dir}")
            self.names = sorted(p.name for p in self.image_dir.iterdir()
                                if p.name.endswith((".png", ".jpg", ".jpeg")))

    @property
    def has_gt(self) -> bool:
        return self.annot_path is not None

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> ImageRecord:
        name = self.names[index]
        img_path = self.image_dir / name
        if not self.has_gt:
            return ImageRecord(**_empty_record(img_path, self.name, np.zeros((3, 3)), valid_3d=False,
                                               detect_all_people=False))
        try:
            return self.layout.parse(self.annots[name], img_path)
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise SathmrError(f"{self.annot_path}: bad annotation for image {name!r}: "
                              f"{type(exc).__name__} {exc}") from None

    def __iter__(self) -> Iterator[ImageRecord]:
        return (self[i] for i in range(len(self)))


def present_splits(root: str | Path, name: str) -> list[str]:
    """The splits of dataset ``name`` whose annotation file (or, without one, image folder) is on disk."""
    layout = LAYOUTS[name]
    base = Path(root) / layout.folder
    return [s for s, folder in layout.images.items()
            if ((base / layout.annots[s]).is_file() if s in layout.annots else bool(folder) and (base / folder).is_dir())]


def check_split(root: str | Path, name: str, split: str) -> None:
    """Raise one line when the dataset or split is unknown, or its annotation file is not on disk
    (saying which splits are there and how to choose one)."""
    if name not in LAYOUTS:
        raise SathmrError(f"unknown dataset {name!r}; choose from {', '.join(LAYOUTS)}")
    layout = LAYOUTS[name]
    if split not in layout.images:
        raise SathmrError(f"dataset {name!r} has no split {split!r}; choose from {', '.join(layout.images)}")
    if split not in layout.annots or (Path(root) / layout.folder / layout.annots[split]).is_file():
        return
    what = f"no {name} split {split!r} in {Path(root)} ({Path(root) / layout.folder / layout.annots[split]} not found)"
    present = present_splits(root, name)
    if present:
        raise SathmrError(f"{what}; present: {', '.join(present)} — choose one with --dataset {name}:{present[0]}")
    raise SathmrError(f"{what}, nor any other {name} split ({', '.join(layout.annots)}); is --data the dataset root?")


def open_dataset(root: str | Path, name: str, split: str) -> DatasetReader:
    """Reader for ``<root>/<dataset>/…`` laid out as in spec §6 (e.g. ``open_dataset(r, 'bedlam', 'train_6fps')``)."""
    return DatasetReader(root, name, split)
