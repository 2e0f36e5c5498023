"""write_whole: the target is its old version or its new one, never a part, and no temporary file stays."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from tuner.config.atomic import write_whole


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "trials.csv"
    target.write_text("old, whole\n")

    def half(tmp):
        tmp.write_text("new, cut sh")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_whole(target, half)
    assert target.read_text() == "old, whole\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trials.csv"]


def test_a_whole_write_replaces_the_file_with_the_usual_permissions(tmp_path):
    target = tmp_path / "sub" / "best.json"  # the folder is made
    old_umask = os.umask(0o022)
    try:
        assert write_whole(target, lambda tmp: tmp.write_text("{}")) == target
    finally:
        os.umask(old_umask)
    assert target.read_text() == "{}"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # readable by the group, as any file the user writes
    assert [p.name for p in target.parent.iterdir()] == ["best.json"]


def test_the_temporary_name_has_the_prefix_and_is_unique_per_call(tmp_path):
    target, seen = tmp_path / "experiment_state.json", []
    gate = threading.Barrier(2)

    def write(tmp):
        seen.append(tmp.name)
        gate.wait(timeout=10)  # both temporaries exist at once
        tmp.write_text(tmp.name)

    threads = [threading.Thread(target=write_whole, args=(target, write), kwargs={"prefix": ".gentune-partial-"})
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(seen)) == 2 and all(n.startswith(".gentune-partial-experiment_state.json.") for n in seen)
    assert target.read_text() in seen and [p.name for p in tmp_path.iterdir()] == ["experiment_state.json"]
