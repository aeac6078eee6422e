"""[tool.loopwatch] in the nearest pyproject.toml: run/watch() options, below the
command line and the environment, each error naming its source."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import loopwatch
from loopwatch import Config
from loopwatch.config import ConfigError

TABLE = """
[project]
name = "service"

[tool.loopwatch]
threshold = 0.05
strict = true
include = ["vendored/*"]
"""


def project(tmp_path: Path, table: str = TABLE) -> Path:
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(table))
    nested = tmp_path / "src" / "service"
    nested.mkdir(parents=True)
    return nested


def test_the_nearest_pyproject_sets_options_below_arguments_and_environment(
    tmp_path: Path,
) -> None:
    nested = project(tmp_path)  # looked for from a folder inside the project, upwards
    config = Config.resolve(env={}, project=nested)
    assert (config.threshold, config.strict, config.include) == (0.05, True, ("vendored/*",))
    assert Config.resolve(env={"LOOPWATCH_THRESHOLD": "0.2"}, project=nested).threshold == 0.2
    assert Config.resolve(env={}, project=nested, threshold=0.3).threshold == 0.3
    assert Config.resolve(env={}, project=False).threshold == 0.1


def test_watch_reads_it_from_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project(tmp_path))
    monkeypatch.delenv("LOOPWATCH_THRESHOLD", raising=False)
    with loopwatch.watch() as session:
        pass
    assert session.config.threshold == 0.05 and session.config.strict


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("[tool.loopwatch]\nthreshold = -1\n",
         "invalid loopwatch threshold -1 from [tool.loopwatch] threshold in {path}: "
         "expected a number of seconds > 0"),
        ("[tool.loopwatch]\nstrict = \"maybe\"\n",
         "invalid loopwatch strict 'maybe' from [tool.loopwatch] strict in {path}: "
         "expected true or false"),
        ("[tool.loopwatch]\ntreshold = 0.05\n",
         "invalid loopwatch treshold 0.05 from [tool.loopwatch] in {path}: not a loopwatch "
         "option; known: deadman, exclude"),
        ("[tool.loopwatch]\nthreshold = \n",
         "invalid loopwatch pyproject '{path}' from the [tool.loopwatch] table: not TOML"),
    ],
)
def test_a_bad_value_names_the_file(tmp_path: Path, table: str, message: str) -> None:
    nested = project(tmp_path, table)
    with pytest.raises(ConfigError) as raised:
        Config.resolve(env={}, project=nested)
    assert str(raised.value).startswith(message.format(path=tmp_path / "pyproject.toml"))


def test_a_broken_pyproject_without_the_table_is_not_our_business(tmp_path: Path) -> None:
    nested = project(tmp_path, "[project\nname = ")
    assert Config.resolve(env={}, project=nested).threshold == 0.1


def test_loopwatch_run_takes_it_and_the_command_line_wins(tmp_path: Path) -> None:
    project(tmp_path, "[tool.loopwatch]\nthreshold = 0.05\n")
    (tmp_path / "app.py").write_text(textwrap.dedent("""
        import asyncio, time

        async def main():
            time.sleep(0.08)

        asyncio.run(main())
    """))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("LOOPWATCH")}
        return subprocess.run([sys.executable, "-m", "loopwatch", "run", *args, "app.py"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)

    assert "1 block over 50.0 ms" in run().stderr
    assert "no blocks over 200 ms" in run("--threshold", "0.2").stderr
    (tmp_path / "pyproject.toml").write_text("[tool.loopwatch]\nthreshold = -1\n")
    bad = run()
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("python -m loopwatch: error: invalid loopwatch threshold -1 "
                                 "from [tool.loopwatch] threshold in ")
