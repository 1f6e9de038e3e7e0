"""ResultStore: resume after a kill without duplicates or gaps."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from prefopt.core.errors import DataError
from prefopt.eval.resumable import ResultStore

N = 300

# Child writer: one row per append (each fsynced), slow enough to be killed mid-way.
CHILD = r"""
import math, sys, time
from prefopt.eval.resumable import ResultStore
path, n, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
store = ResultStore(path, key_fields=("id", "subset"))
items = [{"id": i, "subset": "s%d" % (i % 3)} for i in range(n)]
for item in store.pending(items):
    store.append([{**item, "score": round(math.sin(item["id"]), 12)}])
    time.sleep(delay)
"""


def _row(i):
    return {"id": i, "subset": f"s{i % 3}", "score": round(math.sin(i), 12)}


def _run_child(repo_root, path, delay):
    env = {**os.environ, "PYTHONPATH": str(repo_root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(N), str(delay)], env=env)


def _lines(path):
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_append_dedup_and_reload(tmp_path):
    path = tmp_path / "sub" / "res.jsonl"
    store = ResultStore(path, key_fields=("id", "subset"))
    assert store.done_keys() == set() and store.rows() == []
    assert store.append([_row(0), _row(1), _row(1)]) == 2          # duplicate inside a batch dropped
    assert store.append([_row(1), _row(2)]) == 1                    # already stored -> skipped
    again = ResultStore(path, key_fields=("id", "subset"))
    assert again.done_keys() == {(0, "s0"), (1, "s1"), (2, "s2")} and len(again) == 3
    assert again.rows() == [_row(0), _row(1), _row(2)]
    assert [it["id"] for it in again.pending([{"id": i, "subset": f"s{i % 3}"} for i in range(5)])] == [3, 4]
    assert _row(2) in again and (9, "s0") not in again


def test_torn_last_line_is_ignored_then_cut(tmp_path):
    """A kill mid-write leaves '{"id": 2, "sub' without newline: not a row, not a key, cut on next append."""
    path = tmp_path / "res.jsonl"
    ResultStore(path, ("id", "subset")).append([_row(0), _row(1)])
    with open(path, "ab") as fh:
        fh.write(b'{"id": 2, "subset": "s2", "sco')
    store = ResultStore(path, ("id", "subset"))
    assert store.done_keys() == {(0, "s0"), (1, "s1")} and len(store.rows()) == 2
    assert store.append([_row(2), _row(3)]) == 2
    lines = path.read_text().splitlines()
    assert [json.loads(x) for x in lines] == [_row(i) for i in range(4)] and path.read_bytes().endswith(b"\n")


def test_bad_files_and_rows(tmp_path):
    path = tmp_path / "res.jsonl"
    path.write_text('{"id": 1}\nnot json\n{"id": 2}\n')
    with pytest.raises(DataError, match="corrupt line"):
        ResultStore(path, ("id",))
    store = ResultStore(tmp_path / "ok.jsonl", ("id", "subset"))
    with pytest.raises(DataError, match="field 'subset': missing key field"):
        store.append([{"id": 1}])
    with pytest.raises(DataError, match="field 'id': key value must be"):
        store.append([{"id": [1], "subset": "a"}])
    with pytest.raises(ValueError):
        ResultStore(path, "id")


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path, repo_root):
    """Kill a writer process with SIGKILL mid-way, add a torn line as a kill inside a write would, resume;
    the result equals an uninterrupted run: all N keys, once each, same content."""
    full = tmp_path / "full.jsonl"
    assert _run_child(repo_root, full, 0.0).wait(timeout=120) == 0

    path = tmp_path / "killed.jsonl"
    proc = _run_child(repo_root, path, 0.01)
    deadline = time.time() + 60
    while _lines(path) < 30 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    n_killed = _lines(path)
    assert 30 <= n_killed < N                                       # really killed mid-way
    with open(path, "ab") as fh:
        fh.write(json.dumps(_row(n_killed))[:17].encode())          # torn tail, as a kill inside a write
    assert proc.returncode != 0 and len(ResultStore(path, ("id", "subset"))) == n_killed

    assert _run_child(repo_root, path, 0.0).wait(timeout=120) == 0  # resume
    resumed = [json.loads(x) for x in path.read_text().splitlines()]
    uninterrupted = [json.loads(x) for x in full.read_text().splitlines()]
    assert len(resumed) == N and resumed == uninterrupted           # no duplicates, no gaps, same order
    assert ResultStore(path, ("id", "subset")).rows() == [_row(i) for i in range(N)]
