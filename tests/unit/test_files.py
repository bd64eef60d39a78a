from __future__ import annotations

import pytest

from slm_flywheel.files import atomic_write


def test_atomic_write_creates_the_folder_and_replaces_a_file_whole(tmp_path):
    target = tmp_path / "a" / "b.json"
    atomic_write(target, "first")
    atomic_write(target, b"\x00second")
    assert target.read_bytes() == b"\x00second"
    assert [path.name for path in target.parent.iterdir()] == ["b.json"]  # no temporary left behind


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "watermark.json"
    atomic_write(target, "old")


    with pytest.raises(TypeError):
        atomic_write(target, 42)  # type: ignore[arg-type]  (neither text nor bytes: the write fails midway)
    assert target.read_text() == "old"
    assert [path.name for path in tmp_path.iterdir()] == ["watermark.json"]
