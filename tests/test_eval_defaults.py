"""`sathmr data synthetic` then `sathmr eval` with their defaults: the splits agree, messages say what to do."""

import json

from click.testing import CliRunner

from sathmr.cli import main
from sathmr.train.data import open_dataset


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_default_dataset_is_what_eval_reads(tmp_path, embedded):
    data = tmp_path / "data"
    res = run("data", "synthetic", "-o", data, "--n", "10", "--size", "224", "--max-people", "2")
    assert res.exit_code == 0, res.output
    assert "--dataset bedlam:train_6fps" in res.output and "--dataset bedlam:validation_6fps" in res.output
    train, val = open_dataset(data, "bedlam", "train_6fps"), open_dataset(data, "bedlam", "validation_6fps")
    assert len(train) == 10 and len(val) == 1 and not set(train.names) & set(val.names)   # held out
    res = run("eval", "-i", data, "--json", tmp_path / "m.json")
    assert res.exit_code == 0, res.output
    assert "bedlam:validation_6fps  threshold 0.5 (the agora protocol's; sathmr demo/infer default to 0.3)" in res.output
    assert json.loads((tmp_path / "m.json").read_text())["threshold"] == 0.5
    res = run("eval", "-i", data, "--threshold", "0.3")
    assert res.exit_code == 0 and "threshold 0.3  protocol agora" in res.output


def test_missing_split_says_which_exist_and_how_to_choose(tmp_path, embedded):
    data = tmp_path / "data"
    assert run("data", "synthetic", "-o", data, "--n", "1", "--size", "224", "--split", "train").exit_code == 0
    res = run("eval", "-i", data)
    assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
    assert "no bedlam split 'validation_6fps'" in res.output
    assert "present: train_6fps — choose one with --dataset bedlam:train_6fps" in res.output
    res = run("eval", "-i", tmp_path / "nothing_here")
    assert res.exit_code == 2 and "nor any other bedlam split" in res.output and "is --data the dataset root?" in res.output
