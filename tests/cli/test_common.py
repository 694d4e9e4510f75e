"""devise.cli.common.run_command: how a command ends when its output pipe closes."""

from __future__ import annotations

import subprocess
import sys


def test_a_closed_output_pipe_ends_the_command_quietly():
    """`devise-search ... --json | head -1`: the reader goes away; no traceback, exit 141 (128 + SIGPIPE)."""
    script = (
        "import sys; from devise.cli.common import run_command\n"
        "def body():\n"
        "    for _ in range(1000):\n"
        "        print('x' * 1000)\n"
        "    return 0\n"
        "sys.exit(run_command('devise-test', body))\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    process.stdout.readline()
    process.stdout.close()  # as `head -1` does after its line
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 141
    assert stderr == ""
