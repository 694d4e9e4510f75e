"""devise.cli.tensorflow_start: TensorFlow's start-up chatter dropped from the first import, every other line shown.

Most tests import a stand-in ``tensorflow`` package written to a temporary
folder: it writes to file descriptor 2 what the real one's C++ start-up
writes on the project's CPU-only machine (TF 2.21), and can fail or abort
on cue, which the real one does only on a broken installation.
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


def _start(tmp_path, import_lines, device_lines, *, fail=None, level=None, close_stderr=False):
    package = tmp_path / "fake" / "tensorflow"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        textwrap.dedent(
            f"""
            import os
            import types

            def write(text):  # as C++ does: a closed stderr loses the line, nothing more
                try:
                    os.write(2, text)
                except OSError:
                    pass

            write({"".join(line + chr(10) for line in import_lines).encode()!r})
            if {fail!r} == "import":
                raise ImportError("libtensorflow_framework.so.2: cannot open shared object file")
            if {fail!r} == "abort":
                os.abort()

            def list_physical_devices():
                write({"".join(line + chr(10) for line in device_lines).encode()!r})
                return []

            config = types.SimpleNamespace(list_physical_devices=list_physical_devices)
            """
        )
    )
    script = (
        "import sys; from devise.cli.common import quiet_tensorflow\n"
        "quiet_tensorflow(); assert 'tensorflow' not in sys.modules\n"
        "import tensorflow; print(type(tensorflow.__spec__.loader).__name__)\n"
        "print('started', file=sys.stderr or sys.stdout)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'fake'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    if level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = level
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        preexec_fn=(lambda: os.close(2)) if close_stderr else None,
    )


def test_start_up_chatter_is_dropped_and_other_lines_pass(tmp_path):
    done = _start(tmp_path, [CHATTER[0], CHATTER[1], REAL, CHATTER[0], CHATTER[2]], [CUINIT])
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [REAL, "started"]
    assert done.stdout.split() == ["SourceFileLoader"]  # the module keeps its own loader


def test_a_cuinit_failure_with_a_driver_present_is_shown(tmp_path):
    """Without the no-driver line, a failed cuInit is a broken GPU set-up: the user must see it."""
    done = _start(tmp_path, [CHATTER[0]], [CUINIT])
    assert done.stderr.splitlines() == [CUINIT, "started"]


def test_a_failed_start_shows_its_error(tmp_path):
    done = _start(tmp_path, [CHATTER[0], CHATTER[1], REAL], [], fail="import")
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert lines[0] == REAL and "cannot open shared object file" in lines[-1]


def test_a_fatal_message_before_an_abort_gets_out(tmp_path):
    """TensorFlow's fatal start-up errors end in abort(): the filter process outlives us and passes the line on."""
    fatal = "F0000 cpu_feature_guard.cc:44] The TensorFlow library was compiled to use AVX instructions"
    done = _start(tmp_path, [CHATTER[0], fatal], [], fail="abort")
    assert done.returncode < 0 or done.returncode == 134
    assert done.stderr.splitlines() == [fatal]


def test_without_a_stderr_tensorflow_still_imports(tmp_path):
    done = _start(tmp_path, [CHATTER[0], REAL], [CUINIT], close_stderr=True)
    assert done.returncode == 0 and done.stdout.split() == ["SourceFileLoader", "started"]


@pytest.mark.parametrize("level", ["0", "1"])
def test_a_user_who_asked_for_tensorflow_logs_sees_them_all(tmp_path, level):
    done = _start(tmp_path, [CHATTER[0], CHATTER[1]], [CUINIT], level=level)
    assert done.stderr.splitlines() == [CHATTER[0], CHATTER[1], "started"]  # the devices are not listed early
    assert done.stdout.split() == ["SourceFileLoader"]  # no finder was installed


def test_the_real_tensorflow_starts_without_chatter():
    """The real start on this machine: nothing of the lines above (CI has no GPU, so TF writes them all)."""
    script = (
        "from devise.cli.common import quiet_tensorflow\n"
        "quiet_tensorflow(); import tensorflow as tf\n"
        "print(int(tf.reduce_sum(tf.constant([1, 2]))))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
    shown = [line for line in done.stderr.splitlines() if line.strip()]
    assert not [line for line in shown if any(text in line for text in ("InitializeLog", "cudart_stub", "cuInit"))]


@pytest.mark.parametrize(
    ("command", "argv", "message"),
    [
        ("index", ["--images", "{tmp}/no-such-folder", "--out", "{tmp}/index.h5"], "image folder not found"),
        ("classify", ["--labels", "zzzqx", "{tmp}/photo.jpg"], "zzzqx"),
    ],
)
def test_a_bad_argument_is_refused_before_tensorflow_loads(tiny_run, tmp_path, command, argv, message):
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(tmp_path / "photo.jpg")
    script = textwrap.dedent(
        f"""
        import sys
        from devise.cli.{command} import main
        code = main({["--run", str(tiny_run), *[a.format(tmp=tmp_path) for a in argv]]!r})
        print(code, "tensorflow" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert message in done.stderr
    code, loaded = done.stdout.split()
    assert code != "0" and loaded == "False"
