"""The README's quick start and CI must stay in step."""

import re


def _quick_start_commands(readme: str) -> list[str]:
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [c.strip() for c in re.findall(r"```bash\n(.+?)\n\s*```", section, flags=re.S)]


def test_quick_start_is_two_commands(repo_root):
    commands = _quick_start_commands((repo_root / "README.md").read_text())
    assert len(commands) == 2
    assert commands[0].endswith("devise-train --config configs/demo.yaml")
    assert commands[1].endswith("pytest")


def test_ci_runs_the_readme_test_command_verbatim(repo_root):
    test_command = _quick_start_commands((repo_root / "README.md").read_text())[1].strip()
    ci_lines = [line.strip() for line in (repo_root / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_ci_checks_with_the_ruff_version_the_test_extra_installs(repo_root):
    pinned = re.search(r'"ruff==([^"]+)"', (repo_root / "pyproject.toml").read_text()).group(1)
    assert f'"ruff=={pinned}"' in (repo_root / ".ci" / "run").read_text()
