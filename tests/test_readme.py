"""README.md stays true: its glossaries are the dataclasses' docs, its test command is CI's."""

from pathlib import Path

from tuner.config.cli import glossary
from tuner.config import TrainConfig
from tuner.config.search import SEARCH_TRAIN_DEFAULTS, SearchConfig

ROOT = Path(__file__).resolve().parents[1]


def test_glossaries_match_the_config_dataclasses():
    readme = (ROOT / "README.md").read_text()
    assert glossary(TrainConfig, ("a study", SEARCH_TRAIN_DEFAULTS)) in readme
    assert glossary(SearchConfig) in readme


def test_a_study_runs_with_the_defaults_its_help_and_the_glossary_state():
    """`tuner/search.py --help` and the README show a study's own trial defaults (64 kimg, 1000 FID
    samples), which are the values a study with no flags runs with."""
    import subprocess
    import sys

    from tuner.study.driver import parse

    out = subprocess.run([sys.executable, "tuner/search.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120).stdout
    _, base, _ = parse([])
    readme = (ROOT / "README.md").read_text()
    for name, value in SEARCH_TRAIN_DEFAULTS.items():
        assert getattr(base, name) == value
        block = out.split("\n  --" + name.replace("_", "-") + " ", 1)[1].split("\n  --", 1)[0]  # its help entry
        assert f"[default: {value}]" in " ".join(block.split()), (name, block)
        assert f"(a study: `{value}`)" in readme


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = 'pip install -e ".[dev]" && export GENTUNE_DATA_MIRROR=/usr/share/datasets/fashion-mnist && python -m pytest -q -n 3 --dist loadfile --no-loadscope-reorder'
    assert f"```bash\n{command}\n```" in readme
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert command in ci_lines


def tracked_text_files() -> list[Path]:
    import subprocess

    names = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / n for n in names if n.endswith((".md", ".py", ".yaml")) and (ROOT / n).is_file()
            and not n.startswith("benchmarks/results/")]  # dated outputs: a record of their day


def test_every_path_the_docs_and_comments_name_exists_and_none_is_outside_the_repository():
    """After a file moves, a doc that still names its old place fails here; and no doc sends a reader to a
    file the repository does not have (a note on the developers' machine, say)."""
    import re

    path = re.compile(r"(?<![\w/.~-])((?:tuner|models|analysis|tests|docs|benchmarks)/[\w/.-]*\w\.(?:py|md|png|yaml|json))")
    placeholders = {"benchmarks/NAME.py"}
    missing, outside = [], []
    for file in tracked_text_files():
        text = file.read_text()
        missing += [f"{file.relative_to(ROOT)}: {p}" for p in path.findall(text)
                    if p not in placeholders and not (ROOT / p).exists()]
        if file.name != "test_readme.py":
            outside += [f"{file.relative_to(ROOT)}: {n}" for n in ("RAY-OPTUNA.md", "ENVIRONMENT.md", "../shared")
                        if n in text]
    assert not missing, missing
    assert not outside, outside


def test_the_readme_is_a_first_page():
    """What gentune is, the two commands, what a study prints and how long it takes, the layout, the
    glossary; the rest lives in docs/ (history lives in git)."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    rows = [line.split("|")[1].strip() for line in readme.splitlines() if line.startswith("| `")]
    assert len(rows) == len(set(rows)), sorted({r for r in rows if rows.count(r) > 1})  # each key is glossed once
    for heading in ("## Two commands", "## What a study prints, and how long it takes", "## Layout", "## Glossary"):
        assert heading in readme
