"""README.md stays true: its glossaries are the dataclasses' docs, its test command is CI's."""

from pathlib import Path

from tuner.cli import glossary
from tuner.config import TrainConfig
from tuner.study import SearchConfig

ROOT = Path(__file__).resolve().parents[1]


def test_glossaries_match_the_config_dataclasses():
    readme = (ROOT / "README.md").read_text()
    assert glossary(TrainConfig) in readme
    assert glossary(SearchConfig) in readme


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = 'pip install -e ".[dev]" && export GENTUNE_DATA_MIRROR=/usr/share/datasets/fashion-mnist && python -m pytest -q -n 2 --dist loadfile --ignore=tests/tuner/test_faults.py && python -m pytest -q -n 2 tests/tuner/test_faults.py'
    assert f"```bash\n{command}\n```" in readme
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines
