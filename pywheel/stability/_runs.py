"""train / sweep, and reading run and sweep folders back as numpy (and pandas)."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np

from . import _stability
from ._config import Config


def cli_path() -> str:
    """The `stability` command-line binary shipped in this wheel."""
    return os.path.join(os.path.dirname(__file__), "bin", "stability")


class Run:
    """A run folder: ``config``, ``summary`` (dict), ``metrics`` (numpy array per name,
    NaN where a step did not record it), ``torn_last_line`` (a crash cut the last line)."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        cfg = os.path.join(self.path, "config.json")
        if not os.path.exists(cfg):
            raise FileNotFoundError(f"{self.path} holds no run (no config.json)")
        with open(cfg) as f:
            self.config = Config.from_dict(json.load(f))
        summary = os.path.join(self.path, "summary.json")
        self.summary: Optional[Dict[str, Any]] = None
        if os.path.exists(summary):
            with open(summary) as f:
                self.summary = json.load(f)
        rows, self.torn_last_line = [], False
        metrics = os.path.join(self.path, "metrics.jsonl")
        if os.path.exists(metrics):
            with open(metrics) as f:
                text = f.read()
            lines = text.split("\n")
            if lines and lines[-1] != "":
                self.torn_last_line = True  # no newline: a write cut short
            rows = [json.loads(line) for line in lines[:-1] if line]
        self.rows: List[Dict[str, Any]] = rows
        names: List[str] = []
        for r in rows:
            for k in r:
                if k not in names:
                    names.append(k)
        self.metrics: Dict[str, np.ndarray] = {
            k: np.array([r.get(k) if r.get(k) is not None else math.nan for r in rows], dtype=np.float64) for k in names}

    @property
    def diverged(self) -> bool:
        """Whether the run ended by divergence."""
        return bool(self.summary and self.summary.get("diverged"))

    def dataframe(self):
        """The metrics as a pandas DataFrame, one row per step (needs pandas)."""
        import pandas as pd  # optional dependency
        return pd.DataFrame(self.metrics)

    def __repr__(self) -> str:
        state = "diverged" if self.diverged else ("finished" if self.summary else "unfinished")
        return f"Run({self.path!r}, {len(self.rows)} steps, {state})"


def load_run(path: str) -> Run:
    """Reads a run folder written by ``train`` or `stability train`."""
    return Run(path)


class _Progress:
    """tqdm when installed, else one plain line rewritten in place."""

    def __init__(self, total: int) -> None:
        self.total = total
        try:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, unit="step")
        except ImportError:
            self.bar = None
        self.start = time.time()

    def update(self, row: Dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}")
            return
        step = row.get("step", 0)
        sys.stderr.write(f"\rstep {step}/{self.total} | loss {row.get('loss', float('nan')):.4f} | "
                         f"{row.get('tokens_per_s', 0):.0f} tok/s")
        if step >= self.total:
            sys.stderr.write("\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train(config: Config, callback: Optional[Callable[[Dict[str, Any]], Optional[bool]]] = None,
          progress: bool = True, resume: bool = False, stop_after: int = 0) -> Run:
    """Trains ``config`` into its run folder (``config.out``, or runs/<...> by default).

    ``callback(row)`` gets every step's metrics row (a dict); returning False stops the run
    with a checkpoint (``resume=True`` continues it). Ctrl-C also stops it cleanly (after a
    checkpoint) and raises KeyboardInterrupt. The GIL is released while training.
    """
    bar = _Progress(config.steps) if progress else None

    def on_step(row_json: str) -> bool:
        row = json.loads(row_json)
        if bar is not None:
            bar.update(row)
        if callback is not None:
            r = callback(row)
            return r is None or bool(r)
        return True

    try:
        summary = json.loads(_stability.train(config.to_json(), bool(resume), int(stop_after), on_step))
    finally:
        if bar is not None:
            bar.close()
    return Run(summary["run"])


class Sweep:
    """A sweep folder: ``cells`` (Run per cell that has started), ``tables`` (the four tables
    as lists of row dicts), ``markdown`` (results.md's tables), ``spec``."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        info = json.loads(_stability.sweep_results(self.path))
        self.spec: Dict[str, Any] = info["spec"]
        self.tables: Dict[str, List[Dict[str, str]]] = info["tables"]
        self.markdown: str = info["markdown"]
        self.cells: Dict[str, Run] = {}
        for c in info["cells"]:
            d = os.path.join(self.path, "cells", c["name"])
            if os.path.exists(os.path.join(d, "config.json")):
                self.cells[c["name"]] = Run(d)

    def __repr__(self) -> str:
        return f"Sweep({self.path!r}, {len(self.cells)} cells)"


def load_sweep(path: str) -> Sweep:
    """Reads a sweep folder written by ``sweep`` or `stability sweep`."""
    return Sweep(path)


def sweep(spec: Dict[str, Any], out: str, jobs: int = 2, threads_per_job: int = 1) -> Sweep:
    """Runs a sweep spec (README: Sweeps) into ``out``, ``jobs`` cells at a time."""
    outcome = _stability.run_sweep(json.dumps(spec), os.path.abspath(out), int(jobs), int(threads_per_job), cli_path())
    if outcome["failed"]:
        raise RuntimeError("sweep cells failed: " + "; ".join(outcome["failures"]))
    return Sweep(out)
