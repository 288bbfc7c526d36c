"""Task results in an embedded SQLite database: one row per finished task, committed as it
arrives, so a crash or a killed worker loses no finished result and a rerun skips them.

A database belongs to one run description (``meta.spec_digest``): opening it for another spec
is refused, as is a file that is not a heapemu results database or is damaged (truncated,
half-written, a row whose stored digest does not match its result). The checks run at open:
the SQLite header, ``PRAGMA application_id``/``user_version``, ``PRAGMA quick_check``, the
tables, and every row's SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

APPLICATION_ID = 0x48454D55  # "HEMU"
SCHEMA_VERSION = 1
SQLITE_HEADER = b"SQLite format 3\x00"
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE results (
    key TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT NOT NULL,
    digest TEXT NOT NULL,
    seconds REAL NOT NULL,
    ops INTEGER NOT NULL,
    worker TEXT NOT NULL,
    finished REAL NOT NULL
);
"""


class StoreError(Exception):
    """The results database cannot be used: says why and what to do."""


def canonical(value: Any) -> str:
    """The JSON text results are stored and compared as (sorted keys, no spaces)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Row:
    key: str
    task: dict[str, Any]
    status: str  # "ok", "failed" (the case found something), "error" (the task itself broke)
    result: dict[str, Any]
    seconds: float
    ops: int
    worker: str


class ResultStore:
    """``ResultStore(path, kind, spec)``: opens (or creates) the database for one spec."""

    def __init__(self, path: str | Path, kind: str, spec: dict[str, Any]):
        self.path = Path(path)
        self.kind = kind
        self.spec_digest = digest(canonical(spec))
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if not fresh:
            self._check_file()
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30.0)
            # write-ahead log, synced at checkpoints: a commit survives the process being
            # killed (not a power cut) and costs no fsync, so the driver keeps up with
            # thousands of results a second
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            if fresh:
                self._create(spec)
            else:
                self._check_db()
        except sqlite3.DatabaseError as e:
            raise StoreError(self._damaged(str(e))) from None

    # ------------------------------------------------------------------ opening
    def _damaged(self, why: str) -> str:
        return (
            f"{self.path}: damaged results database ({why}); it is left as it is: move it "
            "away (its finished results may still be read with sqlite3) and rerun, or pass "
            "--db NEW_FILE"
        )

    def _check_file(self) -> None:
        with self.path.open("rb") as f:
            head = f.read(100)
        if not head.startswith(SQLITE_HEADER):
            raise StoreError(
                f"{self.path}: not a heapemu results database (not SQLite); "
                "refusing to touch it: pass --db NEW_FILE"
            )
        if len(head) < 100:
            raise StoreError(self._damaged("truncated header"))

    def _create(self, spec: dict[str, Any]) -> None:
        with self.db:
            self.db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.db.executescript(SCHEMA)
            self.db.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("kind", self.kind),
                    ("spec_digest", self.spec_digest),
                    ("spec", canonical(spec)),
                    ("created", str(time.time())),
                ],
            )

    def _check_db(self) -> None:
        db = self.db
        (app,) = db.execute("PRAGMA application_id").fetchone()
        if app != APPLICATION_ID:
            raise StoreError(
                f"{self.path}: an SQLite database, but not a heapemu results database "
                "(application_id); pass --db NEW_FILE"
            )
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: results database of schema {version}, this heapemu writes "
                f"{SCHEMA_VERSION}; pass --db NEW_FILE"
            )
        check = [r[0] for r in db.execute("PRAGMA quick_check").fetchall()]
        if check != ["ok"]:
            raise StoreError(self._damaged("; ".join(check[:3])))
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "results"} <= tables:
            raise StoreError(self._damaged("tables missing"))
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("kind") != self.kind or meta.get("spec_digest") != self.spec_digest:
            raise StoreError(
                f"{self.path}: holds the results of another {meta.get('kind', '?')} run (a "
                "different spec); rerun with the same spec to resume it, or pass --db NEW_FILE"
            )
        for key, result, stored in db.execute("SELECT key, result, digest FROM results"):
            if digest(result) != stored:
                raise StoreError(
                    self._damaged(f"the result of task {key} does not match its digest")
                )

    # ------------------------------------------------------------------ use
    def done(self) -> set[str]:
        """Keys of the finished tasks."""
        return {r[0] for r in self.db.execute("SELECT key FROM results")}

    def add(
        self,
        key: str,
        task: dict[str, Any],
        status: str,
        result: dict[str, Any],
        seconds: float,
        ops: int,
        worker: str,
    ) -> None:
        """Store one finished task, committed at once."""
        text = canonical(result)
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    canonical(task),
                    status,
                    text,
                    digest(text),
                    seconds,
                    ops,
                    worker,
                    time.time(),
                ),
            )

    def rows(self) -> Iterator[Row]:
        for key, task, status, result, seconds, ops, worker in self.db.execute(
            "SELECT key, task, status, result, seconds, ops, worker FROM results ORDER BY key"
        ):
            yield Row(key, json.loads(task), status, json.loads(result), seconds, ops, worker)

    def results(self) -> dict[str, dict[str, Any]]:
        """Every finished task's result by key (what two runs of the same spec compare)."""
        return {r.key: r.result for r in self.rows()}

    def spec(self) -> dict[str, Any]:
        (text,) = self.db.execute("SELECT value FROM meta WHERE key = 'spec'").fetchone()
        out: dict[str, Any] = json.loads(text)
        return out

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_existing(path: str | Path) -> tuple[str, dict[str, Any]]:
    """(kind, spec) of an existing database, checked like any open (for ``--report``)."""
    p = Path(path)
    if not p.exists():
        raise StoreError(f"{p}: no such results database")
    try:
        db = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        db.close()
    except sqlite3.DatabaseError as e:
        if not p.read_bytes()[:16].startswith(SQLITE_HEADER):
            raise StoreError(f"{p}: not a heapemu results database (not SQLite)") from None
        raise StoreError(f"{p}: damaged results database ({e}); move it away") from None
    if "kind" not in meta or "spec" not in meta:
        raise StoreError(f"{p}: not a heapemu results database")
    spec: dict[str, Any] = json.loads(meta["spec"])
    return meta["kind"], spec
