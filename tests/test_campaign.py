"""heapemu campaign: cases, the results store, the local pool and Ray (issue 19)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import pytest

from emu.cli import main
from emu.heap.registry import ALLOCATOR_NAMES
from emu.scenario import load_text, parse_scenario, run_scenario
from emu.search.campaign import differential_case, inject_case, parse_campaign
from emu.search.runner import Task, run_tasks
from emu.search.store import ResultStore, StoreError

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"kind": "invariant", "seeds": 2, "ops": 600, "check_every": 200}


def _tasks(spec: dict[str, object]) -> list[Task]:
    return [Task(k, fn, p) for k, fn, p in parse_campaign(spec).cases()]


# ---------------------------------------------------------------------- the store
def _store_with_rows(path: Path, rows: int = 200) -> None:
    with ResultStore(path, "campaign", {"x": 1}) as s:
        for i in range(rows):
            s.add(f"k{i:04}", {"i": i}, "ok", {"blob": "x" * 900, "i": i}, 0.1, 10, "w")


def test_store_resumes_and_refuses_what_it_cannot_trust(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    _store_with_rows(db)
    with ResultStore(db, "campaign", {"x": 1}) as s:  # reopened: the same finished tasks
        assert len(s.done()) == 200 and s.results()["k0007"]["i"] == 7
    with pytest.raises(StoreError, match="another campaign run"):
        ResultStore(db, "campaign", {"x": 2})
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database at all\n" * 100)
    with pytest.raises(StoreError, match="not a heapemu results database"):
        ResultStore(garbage, "campaign", {"x": 1})
    half = tmp_path / "half.db"
    half.write_bytes(db.read_bytes()[: db.stat().st_size // 2])  # a half-written file
    with pytest.raises(StoreError, match="damaged results database"):
        ResultStore(half, "campaign", {"x": 1})
    tampered = tmp_path / "tampered.db"
    tampered.write_bytes(db.read_bytes())
    con = sqlite3.connect(tampered)
    con.execute("UPDATE results SET result = '{\"i\": 8}' WHERE key = 'k0007'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="task k0007 does not match its digest"):
        ResultStore(tampered, "campaign", {"x": 1})
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(StoreError, match="not a heapemu results database"):
        ResultStore(other, "campaign", {"x": 1})


def test_cli_refuses_a_damaged_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "c.json"
    spec.write_text(json.dumps(dict(SMALL, allocator="builtin", arch="x64")))
    db = tmp_path / "r.db"
    _store_with_rows(db)
    db.write_bytes(db.read_bytes()[:5000])
    assert main(["campaign", str(spec), "--db", str(db), "--workers", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "damaged results database" in err and "--db NEW_FILE" in err
    assert main(["campaign", "--report", str(db)]) == 2


# ---------------------------------------------------------------------- cases
# every allocator in at least one pair: (builtin, wine), (wine, segment), (segment, win7)
PAIRS = list(pairwise(ALLOCATOR_NAMES))


@pytest.mark.parametrize("pair", PAIRS, ids=["-".join(p) for p in PAIRS])
def test_differential_case_reports_a_minimal_divergence_as_a_scenario(
    arch: str, pair: tuple[str, str]
) -> None:
    a, b = pair
    payload = {
        "ops": 400,
        "workload": {"sizes": "mixed", "lifetime": 50.0, "realloc": 0.05},
        "name": "t",
        "shrink": True,
        "shrink_budget": 150,
        "seed": 1,
        "pair": [a, b],
        "arch": arch,
    }
    status, result, ops = differential_case(payload)
    assert ops == 800
    if status == "ok":  # the two allocators agreed on this workload
        assert not result["diverged"]
        return
    assert result["diverged"] and result["verified"]
    minimal = result["minimal"]
    assert len(minimal["ops"]) <= result["first"]["op"] + 1
    assert minimal[a] != minimal[b]
    scenario = parse_scenario(load_text(result["scenario"]))
    assert [s.kind for s in scenario.allocators] == [a, b]
    for name in pair:  # the scenario runs on both, call by call
        assert run_scenario(scenario, arch, name).ok


INJECT = {
    "ops": 150,
    "after": 60,
    "workload": {"sizes": "small", "lifetime": 30.0},
    "name": "t",
    "shrink": True,
    "shrink_budget": 20,
    "seed": 4,
}


def _shows(scenario: str, effect: str) -> None:
    """heapemu run of an inject case's scenario shows its effect."""
    r = run_scenario(parse_scenario(load_text(scenario)))
    assert any("injected bug" in s.step.note for s in r.steps)
    if effect == "fault":  # stopped by an EmulationError in an operation
        assert r.failure is not None and r.failure.fault is not None, r.failure
    else:  # ran to the end, the check of its effect included
        assert r.ok, r.failure and r.failure.error
        last = r.steps[-1].step
        if effect == "arbitrary_write":
            assert last.op == "read" and last.has_expect


def test_inject_case_finds_and_shrinks_an_effect(arch: str, allocator_kind: str) -> None:
    # a 16-byte use after free: the freed block's links now point at the target, and the
    # allocator writes through them (in-band free-list links on the NT heaps; the segment heap's
    # VS free-chunk tree nodes, which it follows further into the target's bytes and faults)
    status, result, _ = inject_case(
        dict(INJECT, arch=arch, allocator=allocator_kind, bug="use_after_free:16")
    )
    assert status == "failed", result
    assert result["effect"] in ("arbitrary_write", "arbitrary_alloc", "overlap", "fault")
    assert result["verified"], result
    assert result["minimal"]["before"] < 150 and result["minimal"]["effect"] == result["effect"]
    _shows(result["scenario"], result["effect"])


@pytest.mark.parametrize(
    ("arch", "bug"), [("x64", "use_after_free:64"), ("x86", "use_after_free:16")], indirect=["arch"]
)
def test_an_arbitrary_write_followed_by_a_fault_gives_a_scenario_ending_before_it(
    arch: str, bug: str
) -> None:
    # found by a scan of seeds: the builtin heap writes the target through the planted links,
    # and an operation later walks the corrupted free list for ever (the instruction budget
    # ends it); heapemu run has no budget, so the scenario must stop before that operation
    payload = dict(INJECT, arch=arch, allocator="builtin", seed=9, bug=bug, shrink=False)
    _, result, _ = inject_case(payload)
    assert result["effect"] == "arbitrary_write" and "fault" in result["effects"], result
    assert f"written by op {result['op']};" in result["effects"]["arbitrary_write"]
    assert f"in op #{result['op'] + 1} " in result["effects"]["fault"]
    status, result, _ = inject_case(dict(payload, shrink=True))
    assert status == "failed" and result["effect"] == "arbitrary_write" and result["verified"]
    _shows(result["scenario"], "arbitrary_write")


# ---------------------------------------------------------------------- engines
def test_local_pool_and_a_local_ray_cluster_give_the_same_results(tmp_path: Path) -> None:
    import ray  # a test dependency (pyproject's test extra), like the allocators' DLLs

    spec = dict(SMALL, allocator="all", arch="both")
    tasks = _tasks(spec) + _tasks({**spec, "kind": "differential", "seeds": 1})
    with ResultStore(tmp_path / "local.db", "campaign", {"t": 1}) as local:
        s = run_tasks(tasks, local, workers=2, quiet=True)
        assert s.complete and s.finished == len(tasks) and s.engine == "local"
        expected = local.results()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with ResultStore(tmp_path / "ray.db", "campaign", {"t": 1}) as on_ray:
            s = run_tasks(tasks, on_ray, ray_address="local", quiet=True)
            assert s.complete and s.engine == "ray" and s.workers == 2
            assert on_ray.results() == expected
            workers = {r.worker for r in on_ray.rows()}
    finally:
        ray.shutdown()
    assert len(workers) >= 2  # the tasks ran in more than one Ray worker process
    assert all(r["ok"] for k, r in expected.items() if k.startswith("invariant"))


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _is_pool_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _rows(db: Path) -> dict[str, str]:
    if not db.exists():
        return {}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        rows = dict(con.execute("SELECT key, result FROM results").fetchall())
        con.close()
        return rows
    except sqlite3.OperationalError:  # not created yet
        return {}


def _start(spec: Path, out: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "emu.cli",
        "campaign",
        str(spec),
        "--workers",
        "2",
        "--out",
        str(out),
        "--quiet",
        "--json",
    ]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_rows(db: Path, proc: subprocess.Popen[bytes], n: int) -> dict[str, str]:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        rows = _rows(db)
        if len(rows) >= n:
            return rows
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} results before the campaign ended: {_rows(db)}")


def test_killed_workers_lose_no_finished_result(tmp_path: Path) -> None:
    spec = tmp_path / "kill.json"
    spec.write_text(
        json.dumps(dict(SMALL, allocator="all", arch="both", seeds=4, ops=1500, check_every=300))
    )
    total = len(_tasks(json.loads(spec.read_text())))
    # 1. one pool worker killed mid-campaign: the pool is rebuilt and the campaign completes
    out = tmp_path / "a"
    proc = _start(spec, out)
    before = _wait_rows(out / "results.db", proc, 2)
    workers = [p for p in _children(proc.pid) if _is_pool_worker(p)]
    assert workers
    os.kill(workers[0], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    after = _rows(out / "results.db")
    assert all(after[k] == v for k, v in before.items())  # nothing finished was lost
    assert len(after) == total, stderr.decode()
    # 2. the whole campaign killed (parent and workers): the rerun runs only what is missing
    out = tmp_path / "b"
    proc = _start(spec, out)
    _wait_rows(out / "results.db", proc, 2)
    pids = [proc.pid, *_children(proc.pid)]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    before = _rows(out / "results.db")
    assert 2 <= len(before) < total
    proc = _start(spec, out)
    stdout, stderr = proc.communicate(timeout=300)
    report = json.loads(stdout)
    assert proc.returncode == 0, stderr.decode()
    assert report["run"]["skipped"] == len(before)
    assert report["run"]["finished"] == total - len(before)
    final = _rows(out / "results.db")
    assert len(final) == total and all(final[k] == v for k, v in before.items())
    assert final == _rows(tmp_path / "a" / "results.db")  # the same results as run 1


def test_campaign_report_summarises_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "c.json"
    spec.write_text(
        json.dumps(
            {
                "kind": "differential",
                "arch": "x64",
                "pairs": [["builtin", "wine"]],
                "seeds": 1,
                "ops": 300,
                "workload": {"sizes": "mixed", "lifetime": 50},
            }
        )
    )
    out = tmp_path / "out"
    code = main(["campaign", str(spec), "--workers", "0", "--out", str(out), "--quiet"])
    text = capsys.readouterr().out
    report = json.loads(_json_report(out / "results.db", capsys))
    assert report["tasks"] == 1 and report["kind"] == "campaign"
    diverged = report["failures"]
    assert code == (1 if diverged else 0)
    if diverged:  # the minimal divergence is a scenario file that runs on both allocators
        (path,) = (out / "failures").glob("*.yaml")
        assert "diverges at op" in text
        assert main(["run", str(path)]) == 0


def _json_report(db: Path, capsys: pytest.CaptureFixture[str]) -> str:
    main(["campaign", "--report", str(db), "--json"])
    return capsys.readouterr().out
