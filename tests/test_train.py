"""Training engine: a step learns, a resumed run repeats the uninterrupted one, eval runs end to end."""

import json
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from sathmr.cli import main
from sathmr.model import build_model
from sathmr.model.config import get_config

TINY = get_config("tiny")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    from sathmr.train.data.synthetic import generate_dataset
    generate_dataset(root, 6, seed=0, size=TINY.input_size, split="train", max_people=3)
    generate_dataset(root, 3, seed=1, size=TINY.input_size, split="val", max_people=3)
    return root


def make(synth):
    from sathmr.body import load_mean_params
    from sathmr.train.data import open_dataset
    from sathmr.train.data.pipeline import BodyModels, HMRDataset
    bodies = BodyModels(synth / "smpl")
    mp, ms = load_mean_params(synth / "smpl")
    torch.manual_seed(0)
    model = build_model(TINY, torch.from_numpy(mp), torch.from_numpy(ms))
    ds = HMRDataset(open_dataset(synth, "bedlam", "train_6fps"), bodies, TINY, train=True, seed=0)
    return model, ds, bodies.get("neutral")


def test_one_step_changes_weights_and_lowers_loss(synth):
    from sathmr.train.data.pipeline import collate, stack_images
    from sathmr.train.engine import TrainConfig, compute_loss, param_groups
    from sathmr.train.losses import SetCriterion
    model, ds, body = make(synth)
    imgs, targets = collate([ds[0], ds[1]])
    images, img_hw = stack_images(imgs, targets)
    crit = SetCriterion(canvas=TINY.input_size)
    opt = torch.optim.AdamW(param_groups(model, TrainConfig(lr=1e-4, lr_encoder=1e-4)), weight_decay=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss0, parts = compute_loss(model, crit, body, images, img_hw, targets, True, True, torch.Generator().manual_seed(0))
    assert {"confs", "j2ds", "map_confs", "confs_dn", "j3ds.0"} <= set(parts)
    opt.zero_grad()
    loss0.backward()
    opt.step()
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "encoder.blocks.5.mlp.fc2.weight" in changed and "pose_head.0.layers.0.weight" in changed
    assert "mean_pose" not in changed
    with torch.no_grad():
        loss1, _ = compute_loss(model, crit, body, images, img_hw, targets, True, True, torch.Generator().manual_seed(0))
    assert loss1 < loss0


def test_param_groups_follow_encoder_substring():
    from sathmr.train.engine import TrainConfig, param_groups
    model = build_model(TINY)
    enc, rest = param_groups(model, TrainConfig())
    names = {id(p): n for n, p in model.named_parameters()}
    enc_names = {names[id(p)] for p in enc["params"]}
    assert "encoder_pos_embeds" in enc_names and "encoder.norm.weight" in enc_names
    assert "enc_inter_norm.weight" not in enc_names and "scale_head.layers.0.weight" not in enc_names
    assert enc["lr"] == 2e-5 and rest["lr"] == 4e-5


def test_resume_repeats_the_same_steps(synth, tmp_path):
    from sathmr.train.engine import TrainConfig, train

    def run(out, max_steps, resume):
        model, ds, body = make(synth)
        tc = TrainConfig(epochs=2, batch_size=2, lr=1e-4, lr_encoder=1e-4, max_steps=max_steps, save_every_steps=1)
        return train(model, ds, body, out, tc, resume=resume, log=lambda s: None)["model"]

    straight = run(tmp_path / "a", 4, resume=False)
    run(tmp_path / "b", 2, resume=False)
    resumed = run(tmp_path / "b", 4, resume=True)     # continues from step 2 (mid-epoch)
    for k, v in straight.state_dict().items():
        assert torch.allclose(resumed.state_dict()[k], v, atol=1e-6), k
    assert json.loads((tmp_path / "b" / "checkpoints" / "step_4" / "progress.json").read_text())["global_step"] == 4


def test_train_and_eval_commands(synth, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "-i", str(synth), "--config", "tiny", "--output", str(out),
                                    "--epochs", "1", "--batch-size", "3", "--threshold", "0.0"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (out / "model_final.safetensors").is_file() and list((out / "logs").rglob("events.out.tfevents*"))
    res = CliRunner().invoke(main, ["eval", "-i", str(synth), "--checkpoint", str(out / "model_final.safetensors"),
                                    "--smpl-dir", str(synth / "smpl"), "--threshold", "0.0",
                                    "--json", str(tmp_path / "m.json")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"f1", "precision", "recall", "mpjpe", "mve"} <= set(metrics)
    assert 0.0 <= metrics["precision"] <= 1.0


def test_loss_is_the_same_when_every_dn_layer_is_decoded(synth):
    """compute_loss decodes only the scored (last) DN layer; decoding them all gives the same losses."""
    from sathmr.runtime.postprocess import decode_people
    from sathmr.train.data.pipeline import collate, stack_images
    from sathmr.train.dn import build_dn_queries
    from sathmr.train.engine import compute_loss, gt_scale_override
    from sathmr.train.losses import SetCriterion
    model, ds, body = make(synth)
    imgs, targets = collate([ds[0], ds[2]])
    images, img_hw = stack_images(imgs, targets)
    crit = SetCriterion(canvas=TINY.input_size)
    with torch.no_grad():
        total, parts = compute_loss(model, crit, body, images, img_hw, targets, True, True, torch.Generator().manual_seed(3))
        dn = build_dn_queries(targets, model.dn_enc, TINY.num_queries, TINY.dn_number, generator=torch.Generator().manual_seed(3))
        override = gt_scale_override(targets, images.shape[2] // TINY.cell_size, images.shape[3] // TINY.cell_size, images.device)
        out = model(images, img_hw, dn=dn, scale_map_override=override)
        out["layers"] = [decode_people(x, img_hw, body, TINY, with_verts=False) for x in out["layers"]]
        out["dn_layers"] = [decode_people(x, img_hw, body, TINY, with_verts=False) for x in out["dn_layers"]]
        total_all, parts_all = crit(out, targets, dn)
    assert "j3ds_dn" in parts and set(parts) == set(parts_all)
    assert torch.equal(total, total_all)


def test_damaged_resume_state_fails_in_one_line_naming_the_folder(synth, tmp_path):
    """Issue #25, row 8: a damaged optimizer/schedule/RNG/progress file in the step folder a run resumes
    from is one line naming that folder and --no-resume; a damaged RNG state is not skipped."""
    import shutil

    from sathmr.common.errors import SathmrError
    from sathmr.train.engine import TrainConfig, train
    tc = TrainConfig(epochs=1, batch_size=2, lr=1e-4, lr_encoder=1e-4, max_steps=1, save_every_steps=1)

    def run(out, resume=True, steps=1):
        model, ds, body = make(synth)
        return train(model, ds, body, out, replace(tc, max_steps=steps), resume=resume, log=lambda s: None)

    run(tmp_path / "good", resume=False)
    step = tmp_path / "good" / "checkpoints" / "step_1"
    assert {"optimizer.bin", "sched.pt", "random_states_0.pkl", "progress.json"} <= {p.name for p in step.iterdir()}
    damage = {"optimizer.bin": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
              "sched.pt": lambda p: p.write_bytes(b"\x80\x04garbage"),
              "random_states_0.pkl": lambda p: p.write_bytes(b"not a pickle"),
              "progress.json": lambda p: p.write_text('{"epoch": 0}')}
    for name, spoil in damage.items():
        out = tmp_path / name.replace(".", "_")
        shutil.copytree(tmp_path / "good", out)
        spoil(out / "checkpoints" / "step_1" / name)
        with pytest.raises(SathmrError, match=f"cannot resume from .*step_1: {name} is damaged .*--no-resume") as err:
            run(out, steps=2)
        assert "\n" not in str(err.value)
        run(out, resume=False)                                   # --no-resume starts over
    out = tmp_path / "no_rng"
    shutil.copytree(tmp_path / "good", out)
    (out / "checkpoints" / "step_1" / "random_states_0.pkl").unlink()
    with pytest.raises(SathmrError, match="random_states_0.pkl is damaged \\(missing\\)"):
        run(out, steps=2)
    r = CliRunner().invoke(main, ["train", "--help"])
    assert "--no-resume" in r.output
