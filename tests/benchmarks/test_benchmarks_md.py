"""BENCHMARKS.md is a reference, not a log: short, one section per benchmark script, and every dated
run's full output in benchmarks/results/, linked from it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MD = ROOT / "BENCHMARKS.md"
RESULTS = ROOT / "benchmarks" / "results"


def benchmark_scripts() -> list[str]:
    return sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in ("common", "__init__"))


def test_benchmarks_md_is_short_and_has_one_section_per_benchmark():
    lines = MD.read_text().splitlines()
    assert len(lines) < 400, len(lines)
    scripts = benchmark_scripts()
    assert "search_efficiency" in scripts and "trainer_throughput" in scripts
    sections = [line[3:].strip() for line in lines if line.startswith("## ")]
    for name in scripts:
        assert sections.count(name) == 1, (name, sections)
    # a heading named like a benchmark is one of the scripts; no run is appended as its own section
    assert all(s in scripts for s in sections if re.fullmatch(r"[a-z0-9_]+", s)), sections
    appended = [line for line in lines if re.match(r"#+ (%s):" % "|".join(scripts), line)]
    assert not appended, appended


def test_every_results_link_exists_and_every_dated_run_is_linked():
    text = MD.read_text()
    links = set(re.findall(r"\]\((benchmarks/results/[^)\s]+)\)", text))
    assert links
    missing = sorted(link for link in links if not (ROOT / link).is_file())
    assert not missing, missing
    unlinked = sorted(p.name for p in RESULTS.glob("*.md") if f"benchmarks/results/{p.name}" not in links)
    assert not unlinked, f"dated runs not linked from BENCHMARKS.md: {unlinked}"


def test_no_machine_specific_path_in_benchmarks_md_or_the_results():
    pattern = re.compile(r"(?<![\w.<])(?:/tmp/|/root/|/home/|/work/)")
    for file in [MD, *RESULTS.glob("*.md")]:
        hits = pattern.findall(file.read_text())
        assert not hits, (file.name, hits)
