"""Atomic writes, strict JSON, and cleaning the temporary files of killed writes."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from medzoo.core.fileio import TEMP_PATTERN, atomic_path, clean_stale_temps, file_lock, write_json, write_text


def strict_loads(text: str):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_write_json_writes_nan_and_infinities_as_null_at_any_depth(tmp_path):
    obj = {"val_auc": math.nan, "test": {"auc": [0.5, math.inf, (-math.inf, 1.0)], "p": np.float64("nan")},
           "n": np.int64(3), "w": np.float32(0.25), "ok": np.bool_(True), "arr": np.array([1.5, np.nan]),
           "epochs": (1, 2)}
    path = write_json(tmp_path / "done.json", obj)
    back = strict_loads(path.read_text())
    assert back == {"val_auc": None, "test": {"auc": [0.5, None, [None, 1.0]], "p": None},
                    "n": 3, "w": 0.25, "ok": True, "arr": [1.5, None], "epochs": [1, 2]}
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert strict_loads(write_json(tmp_path / "x.json", math.nan).read_text()) is None


def test_write_json_keeps_other_objects_as_text(tmp_path):
    path = write_json(tmp_path / "p.json", {"where": tmp_path / "run"})
    assert strict_loads(path.read_text()) == {"where": str(tmp_path / "run")}


def test_atomic_path_writes_through_a_marked_temp_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "best.pt"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and TEMP_PATTERN.fullmatch(tmp.name)
        assert tmp.name.startswith(".best.pt.") and tmp.name.endswith(".medzoo-tmp")
        tmp.write_text("new")
        assert not target.exists()
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["best.pt"]
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "new" and os.listdir(tmp_path) == ["best.pt"]


def test_a_killed_write_leaves_a_temp_file_that_clean_stale_temps_removes(tmp_path):
    target = tmp_path / "last.pt"
    write_text(target, "previous")
    code = ("import os, signal, sys; from medzoo.core.fileio import atomic_path\n"
            "with atomic_path(sys.argv[1]) as tmp:\n"
            "    tmp.write_text('partial')\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", code, str(target)])
    assert done.returncode == -9
    (left,) = [p for p in tmp_path.iterdir() if p.name != "last.pt"]
    assert TEMP_PATTERN.fullmatch(left.name) and left.read_text() == "partial"
    assert target.read_text() == "previous"
    assert clean_stale_temps(tmp_path) == [left]
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]


def test_clean_stale_temps_touches_only_exact_temp_names(tmp_path):
    temp = tmp_path / ".last.pt.0123abcd.medzoo-tmp"
    kept = [".notes.tmp", ".last.pt.0123abcd.tmp", "last.pt.0123abcd.medzoo-tmp", ".last.pt.0123ABCD.medzoo-tmp",
            ".last.pt.0123abc.medzoo-tmp", ".0123abcd.medzoo-tmp", "notes.medzoo-tmp"]
    for name in [temp.name, *kept]:
        (tmp_path / name).write_text("x")
    (tmp_path / ".dir.0123abcd.medzoo-tmp").mkdir()
    assert clean_stale_temps(tmp_path) == [temp]
    assert sorted(os.listdir(tmp_path)) == sorted([*kept, ".dir.0123abcd.medzoo-tmp"])


def test_clean_stale_temps_by_age_and_depth(tmp_path):
    old, fresh = tmp_path / ".a.csv.00000001.medzoo-tmp", tmp_path / ".b.csv.00000002.medzoo-tmp"
    deep = tmp_path / "members" / "resnet18" / ".last.pt.00000003.medzoo-tmp"
    deep.parent.mkdir(parents=True)
    for p in (old, fresh, deep):
        p.write_text("x")
    two_hours_ago = time.time() - 7200
    for p in (old, deep):
        os.utime(p, (two_hours_ago, two_hours_ago))
    assert clean_stale_temps(tmp_path, older_than=3600) == [old]
    assert fresh.exists() and deep.exists()
    assert clean_stale_temps(tmp_path, older_than=3600, recursive=True) == [deep]
    assert clean_stale_temps(tmp_path, recursive=True) == [fresh]
    assert clean_stale_temps(tmp_path / "nowhere") == []


def test_file_lock_times_out_while_held_and_a_killed_holders_lock_is_free(tmp_path):
    target = tmp_path / "stages.json"
    with file_lock(target):
        with pytest.raises(TimeoutError, match=r"stages.json.lock"):
            with file_lock(target, timeout=0.1):
                pass
    code = ("import os, signal, sys; from medzoo.core.fileio import file_lock\n"
            "with file_lock(sys.argv[1]):\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    assert subprocess.run([sys.executable, "-c", code, str(target)]).returncode == -9
    assert (tmp_path / "stages.json.lock").exists()  # left behind, but no longer held
    started = time.monotonic()
    with file_lock(target, timeout=5):
        assert time.monotonic() - started < 1


def test_file_lock_keeps_concurrent_read_modify_writes_whole(tmp_path):
    # Two processes each add 1 to a counter 200 times, read and rewrite under the lock: no update is lost.
    counter = tmp_path / "n.json"
    write_json(counter, 0)
    code = ("import json, sys\nfrom medzoo.core.fileio import file_lock, write_json\n"
            "for _ in range(200):\n"
            "    with file_lock(sys.argv[1]):\n"
            "        write_json(sys.argv[1], json.loads(open(sys.argv[1]).read()) + 1)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(counter)]) for _ in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert json.loads(counter.read_text()) == 400
