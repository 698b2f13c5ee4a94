"""Per-image records for batch prediction: resume a half-done output folder, shard the inputs over
``torchrun`` ranks, and merge run-wide files from the records.

``OUT/.pixelwise-predict/`` holds ``run.json`` (what decides a prediction: the model's files,
hashed, and the settings) and one ``NAME.json`` per finished image, written after its image files.
A run with the same signature keeps finished images; a different one clears the records first.
Rank ``r`` of ``w`` takes the inputs ``paths[r::w]``; run-wide files are merged (by rank 0, after a
barrier) from the records in input order, so they equal what one process writes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..data.io import _atomic_write
from ..hub import CONFIG, WEIGHTS, resolve
from ..train.distributed import DistEnv, barrier

STATE_DIR, RUN_FILE = ".pixelwise-predict", "run.json"

__all__ = ["STATE_DIR", "ShardedRun", "signature"]


def signature(model_dir: str | Path, **settings: Any) -> dict[str, Any]:
    """What decides an image's prediction: the model folder's files (hashed) and the settings."""
    folder = resolve(model_dir)
    digest = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        with open(folder / name, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return {"model": digest.hexdigest(), **{k: repr(v) for k, v in sorted(settings.items())}}


class ShardedRun:
    """One prediction run into ``out``: this rank's shard, finished-image checks and records.

    Args:
        env: the process's place in the job (:func:`pixelwise.train.distributed.setup`).
        out: the output folder (created).
        paths: every input, in order (the same list on every rank).
        run_signature: :func:`signature` of the model and settings.
        resume: keep the records of an earlier run with the same signature.
        progress: say when an earlier run is resumed.
    """

    def __init__(self, env: DistEnv, out: Path, paths: list[Path], run_signature: dict[str, Any], *,
                 resume: bool, progress: bool = True) -> None:
        self.env, self.out, self.paths, self.resume = env, out, paths, resume
        self.state = out / STATE_DIR
        if env.is_main:
            out.mkdir(parents=True, exist_ok=True)
            if self._start(run_signature) and progress:
                tqdm.write(f"{out}: resuming; images finished by the earlier run with this model and settings "
                           f"are kept")
        barrier(env)  # the records are settled before any rank reads them
        self.shard = list(enumerate(paths))[env.rank::env.world_size]

    def _start(self, run_signature: dict[str, Any]) -> int:
        run = self.state / RUN_FILE
        old = json.loads(run.read_text()) if run.is_file() else None
        records = [p for p in self.state.glob("*.json") if p.name != RUN_FILE] if self.state.is_dir() else []
        if self.resume and old == run_signature:
            return len(records)
        if records:
            why = "--redo was given" if not self.resume else "the model or the settings differ from the earlier run"
            tqdm.write(f"{self.out}: {why}; predicting every image again")
        shutil.rmtree(self.state, ignore_errors=True)
        self.state.mkdir(parents=True)
        _atomic_write(run, json.dumps(run_signature, indent=1).encode())
        return 0

    def _path(self, path: Path) -> Path:
        return self.state / f"{path.name}.json"

    def read(self, path: Path) -> dict[str, Any] | None:
        """The record of ``path`` (None if it has none, or one of another file of the same name)."""
        record = self._path(path)
        if not record.is_file():
            return None
        try:
            data = json.loads(record.read_text())
        except ValueError:
            return None
        return data if data.get("source") == str(path) else None

    def finished(self, path: Path, files: list[Path], formats: tuple[str, ...] = ()) -> bool:
        """Whether ``path`` was finished with at least ``formats`` and its ``files`` are all there."""
        if not self.resume:
            return False
        data = self.read(path)
        return (data is not None and set(formats) <= set(data.get("formats", ()))
                and all(f.is_file() for f in files))

    def record(self, path: Path, data: dict[str, Any]) -> None:
        """Mark ``path`` finished (call after its files are written)."""
        _atomic_write(self._path(path), json.dumps({"source": str(path), **data}).encode())

    def records(self) -> Iterator[tuple[int, Path, dict[str, Any] | None]]:
        """``(index, path, record or None)`` for every input, in input order."""
        for index, path in enumerate(self.paths):
            yield index, path, self.read(path)
