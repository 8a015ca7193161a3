"""The results store of a sweep: one embedded SQLite database next to one JSON file per run.

``results.sqlite`` in the sweep directory holds a row per finished run (its
config, its value on each of the sweep's axes, status, metrics, memory
ledger, timings, host, start and end times, and the traceback or reason of a
run that did not finish ``ok``). It runs in
WAL mode so readers (a report, a notebook) never block the sweep; the driver
process is its only writer and commits one transaction per finished run, so a
killed driver loses at most the runs that were still in flight. Each run is
also written to ``runs/<id>.json`` (atomically) before its row is committed:
a row in the database always has its JSON file.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path

from memkit.io import write_text_atomic

DATABASE = "results.sqlite"
RUNS = "runs"
COLUMNS = ("id", "config", "axes", "status", "metrics", "memory", "timings", "host", "started",
           "finished", "error")
JSON_COLUMNS = ("config", "axes", "metrics", "memory", "timings")
SCHEMA = """CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, config TEXT, axes TEXT, status TEXT, metrics TEXT, memory TEXT,
    timings TEXT, host TEXT, started REAL, finished REAL, error TEXT)"""


class ResultStore:
    """The ``runs`` table of ``DIRECTORY/results.sqlite`` plus ``DIRECTORY/runs/<id>.json``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / DATABASE
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._db:
            self._db.execute(SCHEMA)

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    def json_path(self, run_id: str) -> Path:
        return self.directory / RUNS / f"{run_id}.json"

    def record(self, run: Mapping) -> None:
        """Write one finished run: its JSON file, then its row in one transaction."""
        missing = [c for c in COLUMNS if c not in run]
        if missing:
            raise ValueError(f"results: a run record needs {list(COLUMNS)}; missing {missing}")
        write_text_atomic(self.json_path(run["id"]), json.dumps(dict(run), indent=2))
        values = [json.dumps(run[c]) if c in JSON_COLUMNS else run[c] for c in COLUMNS]
        with self._db:
            self._db.execute(f"INSERT OR REPLACE INTO runs ({', '.join(COLUMNS)}) "
                             f"VALUES ({', '.join('?' * len(COLUMNS))})", values)

    def statuses(self) -> dict[str, str]:
        """Run id -> status of every run recorded so far."""
        return dict(self._db.execute("SELECT id, status FROM runs"))

    def get(self, ids: Iterable[str] | None = None) -> list[dict]:
        """Recorded runs (all, or those of ``ids`` that exist, in that order) as dicts."""
        rows = {r["id"]: r for r in map(self._decode,
                                        self._db.execute(f"SELECT {', '.join(COLUMNS)} "
                                                         f"FROM runs ORDER BY id"))}
        return list(rows.values()) if ids is None else [rows[i] for i in ids if i in rows]

    @staticmethod
    def _decode(values: tuple) -> dict:
        row = dict(zip(COLUMNS, values, strict=True))
        return row | {c: json.loads(row[c]) for c in JSON_COLUMNS}
