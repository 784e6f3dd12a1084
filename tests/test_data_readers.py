"""Dataset readers on tiny fixtures written in each dataset's real on-disk layout (spec §6)."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sathmr.common.errors import SathmrError
from sathmr.train.data.annots_io import load_annots, save_annots
from sathmr.train.data.readers import open_dataset


def _write_npz(path: Path, annots: dict) -> None:
    """Exactly how the original tools write them: ``np.savez(path, annots=dict)``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, annots=annots)


def _rng_pose(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    return rng.normal(0, 0.2, (n, d)).astype(np.float32)


def test_agora_skips_invalid_people_and_keeps_per_image_intrinsics(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    k = np.array([[1500.0, 0, 640], [0, 1500.0, 360], [0, 0, 1]])
    people = [{"betas": rng.normal(size=(1, 11)), "global_orient": rng.normal(size=(1, 3)),
               "body_pose": rng.normal(size=(1, 69)), "transl": rng.normal(size=(1, 3))} for _ in range(3)]
    ann = {"isValid": [True, False, True], "cam_intrinsics": k,
           "cam_rot": [np.eye(3) * (i + 1) for i in range(3)], "cam_trans": [np.full(3, i) for i in range(3)],
           "smpl_gt": people, "kid": [False, True, True]}
    _write_npz(tmp_path / "agora/smpl_neutral_annots/annots_smpl_validation.npz", {"ag_0001.png": ann})
    reader = open_dataset(tmp_path, "agora", "validation")
    assert len(reader) == 1
    rec = reader[0]
    assert rec.img_path == tmp_path / "agora/validation/ag_0001.png"
    assert rec.num_people == 2
    np.testing.assert_allclose(rec.betas, np.stack([people[0]["betas"][0, :10], people[2]["betas"][0, :10]]))
    np.testing.assert_allclose(rec.body_pose[1], people[2]["body_pose"][0])
    np.testing.assert_allclose(rec.cam_rot[1], np.eye(3) * 3)
    np.testing.assert_allclose(rec.cam_trans[1], np.full(3, 2))
    assert rec.intrinsics.shape == (3, 3) and rec.person_intrinsics().shape == (2, 3, 3)
    assert rec.kid.tolist() == [False, True]
    assert rec.valid_3d and rec.detect_all_people and rec.genders == ["neutral", "neutral"]


def test_agora_train_reads_the_fit_annotations(tmp_path: Path) -> None:
    _write_npz(tmp_path / "agora/smpl_neutral_annots/annots_smpl_train_fit.npz",
               {"a.png": {"isValid": [], "cam_intrinsics": np.eye(3), "cam_rot": [], "cam_trans": [],
                          "smpl_gt": [], "kid": []}})
    rec = open_dataset(tmp_path, "agora", "train")[0]
    assert rec.num_people == 0 and rec.img_path.parent == tmp_path / "agora/train"


def test_bedlam_world_params_and_closeup_flag(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 2
    ann = {"cam_int": np.array([[900.0, 0, 640], [0, 900, 360], [0, 0, 1]]),
           "cam_rot": [np.eye(3)] * n, "cam_trans": [np.array([0.1, 0.2, 0.3])] * n,
           "shape": list(rng.normal(size=(n, 11))), "pose_world": list(_rng_pose(rng, n, 72)),
           "trans_world": list(rng.normal(size=(n, 3)))}
    _write_npz(tmp_path / "bedlam/bedlam_smpl_validation_6fps.npz",
               {"seq_000/png/seq_000_0030.png": ann, "closeup_seq/png/closeup_0001.png": ann})
    reader = open_dataset(tmp_path, "bedlam", "validation_6fps")
    first, second = reader[0], reader[1]
    assert first.img_path == tmp_path / "bedlam/validation/seq_000/png/seq_000_0030.png"
    np.testing.assert_allclose(first.betas, np.stack(ann["shape"])[:, :10])     # 11th beta dropped
    np.testing.assert_allclose(first.global_orient, np.stack(ann["pose_world"])[:, :3], rtol=1e-6)
    np.testing.assert_allclose(first.body_pose, np.stack(ann["pose_world"])[:, 3:], rtol=1e-6)
    np.testing.assert_allclose(first.transl, np.stack(ann["trans_world"]))
    assert first.cam_trans.shape == (2, 3) and not first.rotate_cw and second.rotate_cw
    assert open_dataset(tmp_path, "bedlam", "validation_6fps").image_dir.name == "validation"


@pytest.mark.parametrize("name,file,image_dir,detect_all", [
    ("coco", "COCO_small_NA_SMPL.npz", "train2017", True),
    ("mpii", "MPII_NA_SMPL.npz", "images", False),
    ("crowdpose", "CP_NA_SMPL_train.npz", "images", False),
])
def test_neuralannot_datasets_have_one_camera_per_person(tmp_path: Path, name: str, file: str, image_dir: str,
                                                         detect_all: bool) -> None:
    rng = np.random.default_rng(2)
    persons = [{"smpl_param": {"shape": rng.normal(size=10).tolist(), "pose": rng.normal(size=72).tolist(),
                               "trans": [0.1 * i, 0.0, 5.0]},
                "cam_param": {"focal": [1000.0 + i, 1001.0 + i], "princpt": [320.0 - i, 240.0 + i]}}
               for i in range(3)]
    _write_npz(tmp_path / name / file, {"000001.jpg": persons})
    rec = open_dataset(tmp_path, name, "train")[0]
    assert rec.img_path == tmp_path / name / image_dir / "000001.jpg"
    assert rec.intrinsics.shape == (3, 3, 3)
    np.testing.assert_allclose(rec.intrinsics[2], [[1002.0, 0, 318.0], [0, 1003.0, 242.0], [0, 0, 1]])
    np.testing.assert_allclose(rec.cam_rot, np.broadcast_to(np.eye(3), (3, 3, 3)))
    np.testing.assert_allclose(rec.cam_trans, 0.0)
    np.testing.assert_allclose(rec.transl[1], [0.1, 0.0, 5.0])
    np.testing.assert_allclose(rec.global_orient[0], persons[0]["smpl_param"]["pose"][:3])
    assert not rec.valid_3d and rec.detect_all_people is detect_all


def _tensor_annotation(rng: np.random.Generator, n: int) -> dict:
    return {"cam_intrinsics": torch.tensor([[1100.0, 0, 500], [0, 1100, 500], [0, 0, 1]]),
            "cam_rot": torch.eye(3), "cam_trans": torch.tensor([0.5, -0.2, 1.0]),
            "betas": torch.tensor(rng.normal(size=(n, 10)), dtype=torch.float32),
            "global_orient": torch.tensor(_rng_pose(rng, n, 3)),
            "body_pose": torch.tensor(_rng_pose(rng, n, 69)),
            "transl": torch.tensor(rng.normal(size=(n, 3)), dtype=torch.float32)}


def test_h36m_reads_torch_tensors_and_repeats_the_camera(tmp_path: Path) -> None:
    ann = _tensor_annotation(np.random.default_rng(3), 1)
    _write_npz(tmp_path / "h36m/annots_smpl_train_small.npz", {"images/S1_Walking_000001.jpg": ann})
    rec = open_dataset(tmp_path, "h36m", "train")[0]
    assert rec.img_path == tmp_path / "h36m/images/S1_Walking_000001.jpg"
    np.testing.assert_allclose(rec.betas, ann["betas"].numpy(), rtol=1e-6)
    np.testing.assert_allclose(rec.cam_trans, [[0.5, -0.2, 1.0]], rtol=1e-6)
    assert rec.valid_3d and rec.detect_all_people and rec.genders == ["neutral"]


@pytest.mark.parametrize("key,value,expected", [
    ("genders", ["f", "m"], ["female", "male"]),
    ("genders", ["female", "male"], ["female", "male"]),
    ("gender", "f", ["female", "female"]),
    ("gender", ["x", "female"], ["male", "female"]),
])
def test_3dpw_gender_conventions(tmp_path: Path, key: str, value, expected: list[str]) -> None:
    ann = _tensor_annotation(np.random.default_rng(4), 2)
    ann[key] = value
    _write_npz(tmp_path / "3dpw/annots_smpl_test_genders.npz", {"imageFiles/courtyard_basketball_00/image_00000.jpg": ann})
    rec = open_dataset(tmp_path, "3dpw", "test")[0]
    assert rec.genders == expected
    assert rec.img_path == tmp_path / "3dpw/imageFiles/courtyard_basketball_00/image_00000.jpg"
    assert rec.cam_rot.shape == (2, 3, 3) and rec.valid_3d and not rec.detect_all_people


def test_agora_test_split_lists_the_image_folder(tmp_path: Path) -> None:
    folder = tmp_path / "agora/test"
    folder.mkdir(parents=True)
    for name in ("b.png", "a.jpg", "notes.txt"):
        (folder / name).write_bytes(b"")
    reader = open_dataset(tmp_path, "agora", "test")
    assert not reader.has_gt and reader.names == ["a.jpg", "b.png"]
    assert reader[1].num_people == 0


# --------------------------------------------------------------------------- errors and pickle safety
def test_missing_annotation_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SathmrError, match=r"no bedlam split 'train_6fps' .*bedlam_smpl_train_6fps.npz not found"):
        open_dataset(tmp_path, "bedlam", "train_6fps")


def test_unknown_dataset_and_split(tmp_path: Path) -> None:
    with pytest.raises(SathmrError, match="unknown dataset"):
        open_dataset(tmp_path, "nope", "train")
    with pytest.raises(SathmrError, match="no split"):
        open_dataset(tmp_path, "coco", "validation")


def test_corrupt_and_wrong_npz_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(SathmrError, match="cannot read annotation file"):
        load_annots(bad)
    np.savez(tmp_path / "nokey.npz", other=np.zeros(3))
    with pytest.raises(SathmrError, match="no 'annots' entry"):
        load_annots(tmp_path / "nokey.npz")
    np.savez(tmp_path / "numeric.npz", annots=np.zeros(3))
    with pytest.raises(SathmrError, match="not a pickled object"):
        load_annots(tmp_path / "numeric.npz")
    np.savez(tmp_path / "list.npz", annots=np.array([1, "a"], dtype=object))
    with pytest.raises(SathmrError, match="expected a dict"):
        load_annots(tmp_path / "list.npz")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.npz"
    arr = np.empty((), dtype=object)
    arr[()] = {"x.png": _Evil()}
    np.savez(path, annots=arr)
    with pytest.raises(SathmrError, match="forbidden global posix.system|forbidden global os.system"):
        load_annots(path)


def test_missing_field_names_file_and_image(tmp_path: Path) -> None:
    _write_npz(tmp_path / "bedlam/bedlam_smpl_train_6fps.npz", {"x.png": {"cam_int": np.eye(3)}})
    reader = open_dataset(tmp_path, "bedlam", "train_6fps")
    with pytest.raises(SathmrError, match=r"bad annotation for image 'x.png'.*shape"):
        reader[0]


def test_save_annots_round_trips_and_is_byte_stable(tmp_path: Path) -> None:
    annots = {"a.png": {"m": np.arange(6.0).reshape(2, 3), "t": torch.ones(2), "l": [np.float32(1.5), "s"]}}
    save_annots(tmp_path / "one.npz", annots)
    save_annots(tmp_path / "two.npz", annots)
    assert (tmp_path / "one.npz").read_bytes() == (tmp_path / "two.npz").read_bytes()
    back = load_annots(tmp_path / "one.npz")
    np.testing.assert_array_equal(back["a.png"]["m"], annots["a.png"]["m"])
    assert torch.equal(back["a.png"]["t"], torch.ones(2))
    assert back["a.png"]["l"][1] == "s"
    # and numpy's own loader agrees (the files are ordinary npz)
    with np.load(tmp_path / "one.npz", allow_pickle=True) as npz:
        assert list(npz["annots"].item()) == ["a.png"]


def test_protocol_2_pickles_with_torch_tensors_load(tmp_path: Path) -> None:
    """Older tools wrote protocol-2 pickles, where bytes go through _codecs.encode."""
    arr = np.empty((), dtype=object)
    arr[()] = {"a.jpg": {"betas": torch.arange(10.0).reshape(1, 10)}}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, np.lib.format.header_data_from_array_1_0(arr))
    pickle.dump(arr, buf, protocol=2)
    with zipfile.ZipFile(tmp_path / "p2.npz", "w") as zf:
        zf.writestr("annots.npy", buf.getvalue())
    assert torch.equal(load_annots(tmp_path / "p2.npz")["a.jpg"]["betas"], torch.arange(10.0).reshape(1, 10))
