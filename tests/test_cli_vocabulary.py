"""The command line's first second: one option vocabulary in every command's --help, old spellings that
still work and say what to use, and no heavy import before a command runs."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from sathmr.cli import COMMANDS, main
from sathmr.common.options import rename_args

#: option → its short flag, wherever the option appears (sathmr/common/options.py's table)
SHORT = {"--input": "-i", "--output": "-o", "--model": "-m", "--batch-size": "-b", "--threshold": "-t"}
#: spellings of the same things that no --help may show any more
OLD = {"--images", "--data", "--out", "--dest", "--batch", "--max-batch", "--a", "--b", "--engine"}
HEAVY = ("torch", "onnx", "onnxruntime", "onnxscript", "scipy", "cv2")


def leaf_commands() -> list[tuple[str, click.Command]]:
    ctx = click.Context(main)
    out = []
    for name in main.list_commands(ctx):
        cmd = main.get_command(ctx, name)
        subs = getattr(cmd, "commands", None)
        out += [(f"{name} {s}", c) for s, c in subs.items()] if subs else [(name, cmd)]
    return out


@pytest.mark.parametrize("name,cmd", leaf_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_command_uses_the_vocabulary(name, cmd):
    for p in cmd.params:
        if not isinstance(p, click.Option) or p.hidden:
            continue
        opts = set(p.opts) | set(p.secondary_opts)
        assert not opts & OLD, f"sathmr {name}: {sorted(opts & OLD)} is an old spelling"
        for long, short in SHORT.items():
            if long in opts:
                assert short in opts, f"sathmr {name} {long} lacks {short}"
            elif short in opts:
                pytest.fail(f"sathmr {name}: {short} is not {long}")
        if "--backend" in opts and name not in ("bench", "parity"):
            assert isinstance(p.type, click.Choice) and "ort" in p.type.choices


def test_listing_matches_the_commands():
    ctx = click.Context(main)
    for name in COMMANDS:
        cmd = main.get_command(ctx, name)
        assert cmd.name == name and cmd.get_short_help_str(limit=200) == COMMANDS[name][2]
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0 and all(n in res.output for n in COMMANDS)


def test_cli_and_every_command_load_without_heavy_modules():
    """`import sathmr.cli` and every command's --help stay light: torch alone takes over a second to import."""
    code = ("import sys, click\nfrom sathmr.cli import main\n"
            f"bad = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "ctx = click.Context(main)\n"
            "for n in main.list_commands(ctx):\n"
            "    main.get_command(ctx, n)\n"
            f"bad += [m + ' (after loading the commands)' for m in {HEAVY!r} if m in sys.modules]\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"imported at startup: {out}"


def test_old_spellings_still_work_and_say_what_to_use(tmp_path):
    args, notes = rename_args(["--images", "a", "--batch=2", "--", "--images"], {"--images": "--input", "--batch": "--batch-size"})
    assert args == ["--input", "a", "--batch-size=2", "--", "--images"]
    assert len(notes) == 2 and "--images is now --input" in notes[0]
    res = CliRunner().invoke(main, ["assets", "synthetic", "--out", str(tmp_path / "smpl"), "--size", "tiny"])
    assert res.exit_code == 0, res.output
    assert "--out is now --output" in res.output and (tmp_path / "smpl" / "SMPL_NEUTRAL.pkl").is_file()
