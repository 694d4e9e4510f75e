"""devise-train fails on bad input with one line and exit status 1 or 2, never a traceback."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys

import pytest

from devise.cli.train import main


def _error_lines(stderr: str) -> list[str]:
    """The lines devise-train itself wrote (TensorFlow may add start-up notes)."""
    return [line for line in stderr.splitlines() if line.startswith("devise-train")]


@pytest.fixture
def tiny_args(tiny_overrides, tmp_path, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)
    return ["--config", "configs/demo.yaml", *tiny_overrides(tmp_path), "--quiet"]


def test_an_output_dir_under_a_regular_file_is_one_line_through_the_real_command(tiny_overrides, tmp_path, repo_root):
    """Through the console entry point in a new process: exit 1 or 2, no traceback (it fails as root too)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder\n")
    args = ["--config", "configs/demo.yaml", *tiny_overrides(tmp_path), f"output_dir={blocker}/runs", "--quiet"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    code = "import sys; from devise.cli.train import console_main; sys.argv[0] = 'devise-train'; console_main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode in (1, 2), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = _error_lines(proc.stderr)
    assert len(errors) == 1 and str(blocker) in errors[0] and "not a folder" in errors[0], proc.stderr
    assert blocker.read_text() == "not a folder\n"


def test_a_run_dir_under_a_regular_file_is_one_line(tiny_args, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert main([*tiny_args, "--run-dir", str(blocker / "run")]) in (1, 2)
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and str(blocker) in errors[0] and "not a folder" in errors[0]


@pytest.mark.parametrize("where", ["output_dir", "--run-dir"])
def test_an_unwritable_output_dir_is_one_line(tiny_args, locked_folder, capsys, where):
    locked = locked_folder
    extra = [f"output_dir={locked}"] if where == "output_dir" else ["--run-dir", str(locked / "run")]
    assert main([*tiny_args, *extra]) in (1, 2)
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and str(locked) in errors[0] and "not writable" in errors[0]
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize(
    "override", ["trainer.batch_size=1e30", "trainer.batch_size=" + "9" * 40, "trainer.epochs=" + "1" * 5000]
)
def test_absurd_numbers_are_one_line_with_exit_status_2(tiny_args, capsys, override):
    assert main([*tiny_args, override]) == 2
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and override.split("=")[0] in errors[0] and len(errors[0]) < 300


def _zero_stride_pth(numel: int) -> bytes:
    """A legacy .pth whose one tensor repeats one float ``numel`` times (no torch needed)."""

    def glob(module, name):
        return b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def text(s):
        return b"X" + struct.pack("<I", len(s)) + s.encode()

    def long(i):
        return b"\x8a\x08" + struct.pack("<q", i)

    pid = b"(" + text("storage") + glob("torch", "FloatStorage") + text("0") + text("cpu") + long(1) + b"Nt"
    hooks = glob("collections", "OrderedDict") + b")R"
    args = b"(" + pid + b"Q" + long(0) + b"(" + long(numel) + b"t(" + long(0) + b"t\x89" + hooks + b"t"
    body = b"\x80\x02" + glob("collections", "OrderedDict") + b")R(" + text("_conv_stem.weight")
    body += glob("torch._utils", "_rebuild_tensor_v2") + args + b"Ru."
    head = b"".join(pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    return head + body + pickle.dumps(["0"], protocol=2) + struct.pack("<q", 1) + struct.pack("<f", 1.0)


@pytest.mark.slow
def test_a_crafted_weights_file_is_one_line(tiny_args, tmp_path, capsys):
    """A zero-stride tensor claiming 364 TiB: a MemoryError traceback before."""
    crafted = tmp_path / "crafted.pth"
    crafted.write_bytes(_zero_stride_pth(10**14))
    assert main([*tiny_args, f"image_encoder.weights={crafted}"]) == 1
    errors = _error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and str(crafted) in errors[0] and "TiB" in errors[0]
