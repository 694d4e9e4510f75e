"""start_tensorflow: TensorFlow's start-up chatter held back, everything else (and everything on failure) shown.

The TensorFlow here is a stand-in package written to a temporary folder:
it writes to file descriptor 2 as the real one's C++ start-up does
(these are the lines TF 2.21 writes on the project's CPU-only machine),
which the real one does only on a machine without a GPU driver.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

CHATTER = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796210296.360457   30032 cudart_stub.cc:31] Could not find cuda drivers on your machine, "
    "GPU will not be used.",
    "I0000 00:00:1796210039.072753   28991 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
]
CUINIT = (
    "E0000 00:00:1796210302.012433   30032 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)"
)
REAL = "W0000 00:00:1796210302.1   30032 something.cc:1] a warning the user must see"


def _start(tmp_path, import_lines, device_lines, *, fail=False, level=None):
    package = tmp_path / "fake" / "tensorflow"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        textwrap.dedent(
            f"""
            import os
            import types

            os.write(2, {"".join(line + chr(10) for line in import_lines).encode()!r})
            if {fail!r}:
                raise ImportError("libtensorflow_framework.so.2: cannot open shared object file")

            def list_physical_devices():
                os.write(2, {"".join(line + chr(10) for line in device_lines).encode()!r})
                return []

            config = types.SimpleNamespace(list_physical_devices=list_physical_devices)
            """
        )
    )
    script = (
        "import sys; from devise.cli.common import quiet_tensorflow, start_tensorflow\n"
        "quiet_tensorflow(); start_tensorflow(); print('started', file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'fake'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)


def test_start_up_chatter_is_held_back_and_other_lines_pass(tmp_path):
    done = _start(tmp_path, [CHATTER[0], CHATTER[1], REAL, CHATTER[0], CHATTER[2]], [CUINIT])
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [REAL, "started"]


def test_a_cuinit_failure_with_a_driver_present_is_shown(tmp_path):
    """Without the no-driver line, a failed cuInit is a broken GPU set-up: the user must see it."""
    done = _start(tmp_path, [CHATTER[0]], [CUINIT])
    assert done.stderr.splitlines() == [CUINIT, "started"]


def test_everything_is_shown_when_tensorflow_fails_to_start(tmp_path):
    done = _start(tmp_path, [CHATTER[0], CHATTER[1], REAL], [], fail=True)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[:3] == [CHATTER[0], CHATTER[1], REAL]
    assert "cannot open shared object file" in lines[-1]


@pytest.mark.parametrize("level", ["0", "1"])
def test_a_user_who_asked_for_tensorflow_logs_sees_them_all(tmp_path, level):
    done = _start(tmp_path, [CHATTER[0], CHATTER[1]], [CUINIT], level=level)
    assert done.stderr.splitlines() == [CHATTER[0], CHATTER[1], CUINIT, "started"]


def test_the_real_tensorflow_starts_without_chatter():
    """The real start on this machine: nothing of the lines above (CI has no GPU, so TF writes them all)."""
    script = (
        "import sys; from devise.cli.common import quiet_tensorflow, start_tensorflow\n"
        "quiet_tensorflow(); start_tensorflow(); import tensorflow as tf\n"
        "print(int(tf.reduce_sum(tf.constant([1, 2]))))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
    shown = [line for line in done.stderr.splitlines() if line.strip()]
    assert not [line for line in shown if any(text in line for text in ("InitializeLog", "cudart_stub", "cuInit"))]
