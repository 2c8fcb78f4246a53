"""Persistent cache of measured layer costs (one JSON file per user), so a second run measures nothing.

Location: ``$TDEXPORT_CACHE_DIR/costs.json``, else ``$XDG_CACHE_HOME/tdexport/costs.json``, else
``~/.cache/tdexport/costs.json``. An entry is keyed by the sha256 of the canonical JSON of everything that
changes the timing: the target's `fingerprint` (backend and its settings, CPU / GPU, threads, library
versions, precision), the batch, the layer geometry, the method and the ranks.

The file is only ever replaced whole (temporary file + rename), after merging what another process may
have written meanwhile. A cache that cannot be read (corrupt, another format) or written (read-only
folder) is a warning, never an error: the costs are then measured and kept in memory for the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes
from .geometry import Geometry
from .target import Target, fingerprint

__all__ = ["CACHE_ENV", "CostCache", "default_cache_path", "cost_key", "entry_key"]

CACHE_ENV = "TDEXPORT_CACHE_DIR"
_FORMAT = "tdexport-costs"
_VERSION = 1


def default_cache_path() -> Path:
    """Where the cost cache lives by default.

    ``$TDEXPORT_CACHE_DIR/costs.json``, else ``$XDG_CACHE_HOME/tdexport/costs.json``, else
    ``~/.cache/tdexport/costs.json`` (empty variables count as unset).
    """
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "costs.json"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "tdexport" / "costs.json"


def entry_key(target: Target, what: Mapping[str, Any]) -> str:
    """Hex sha256 of the target's fingerprint, batch and precision plus ``what`` (JSON-ready) identifying a timing."""
    keyed = {"fingerprint": fingerprint(target), "batch": target.batch, "precision": target.precision, **what}
    text = json.dumps(keyed, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _layer_what(geometry: Geometry, method: str, ranks: Sequence[int]) -> dict[str, Any]:
    return {"geometry": geometry.key, "method": method, "ranks": [int(r) for r in ranks]}


def cost_key(target: Target, geometry: Geometry, method: str, ranks: Sequence[int]) -> str:
    """Hex sha256 identifying one layer timing: fingerprint, batch, precision, geometry key, method and ranks."""
    return entry_key(target, _layer_what(geometry, method, ranks))


class CostCache:
    """Measured per-call times (ms) of layer graphs, persisted as JSON.

    Args:
        path: the JSON file; None uses `default_cache_path` (read when the cache is first used).
        enabled: False (``--no-cache``) never reads or writes the file: every cost is measured.

    Attributes:
        measured: how many timings this object recorded with `put` (i.e. measurements performed).
        hits: how many lookups `get` answered from the cache.
    """

    def __init__(self, path: str | Path | None = None, *, enabled: bool = True) -> None:
        self._path = Path(path) if path is not None else None
        self.enabled = enabled
        self.measured = 0
        self.hits = 0
        self._entries: dict[str, dict[str, Any]] | None = None
        self._dirty: dict[str, dict[str, Any]] = {}
        self._writable = True

    @property
    def path(self) -> Path:
        """The JSON file this cache reads and writes."""
        if self._path is None:
            self._path = default_cache_path()
        return self._path

    def _read_file(self) -> dict[str, dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as err:
            warnings.warn(f"cannot read the cost cache {self.path} ({err}); measuring instead", RuntimeWarning,
                          stacklevel=3)
            return {}
        try:
            data = json.loads(text)
            if data.get("format") != _FORMAT or data.get("version") != _VERSION:
                raise ValueError(f"not a version-{_VERSION} {_FORMAT} file")
            entries = data["entries"]
            if not isinstance(entries, dict):
                raise ValueError("'entries' is not an object")
        except (ValueError, KeyError, AttributeError, TypeError) as err:
            warnings.warn(f"ignoring the unreadable cost cache {self.path} ({err}); it will be rewritten",
                          RuntimeWarning, stacklevel=3)
            return {}
        return {k: v for k, v in entries.items() if isinstance(v, dict) and _valid_ms(v.get("ms"))}

    def _loaded(self) -> dict[str, dict[str, Any]]:
        if self._entries is None:
            self._entries = self._read_file() if self.enabled else {}
        return self._entries

    def get(self, target: Target, geometry: Geometry, method: str, ranks: Sequence[int]) -> float | None:
        """Cached ms per call of ``method`` at ``ranks`` on ``geometry`` and ``target``; None if absent or disabled."""
        entry = self.lookup(target, _layer_what(geometry, method, ranks))
        return None if entry is None else float(entry["ms"])

    def put(self, target: Target, geometry: Geometry, method: str, ranks: Sequence[int], ms: float) -> None:
        """Record one fresh measurement (ms per call); counts in `measured`; written on `flush`."""
        self.record(target, _layer_what(geometry, method, ranks), {"ms": float(ms)})

    def lookup(self, target: Target, what: Mapping[str, Any]) -> dict[str, Any] | None:
        """The cached entry for ``what`` on ``target`` (any timing, e.g. a whole model); None if absent or disabled."""
        if not self.enabled:
            return None
        entry = self._loaded().get(entry_key(target, what))
        if entry is None:
            return None
        self.hits += 1
        return dict(entry)

    def record(self, target: Target, what: Mapping[str, Any], entry: Mapping[str, Any]) -> None:
        """Record one fresh measurement: ``entry`` holds at least ``ms`` (ms per call); written on `flush`."""
        self.measured += 1
        if not self.enabled:
            return
        entry = {**entry, "backend": target.backend, "batch": target.batch, **what}
        if not _valid_ms(entry.get("ms")):
            raise ValueError(f"a cost entry needs a non-negative 'ms', got {entry.get('ms')!r}")
        key = entry_key(target, what)
        self._loaded()[key] = entry
        self._dirty[key] = entry

    def flush(self) -> None:
        """Write new entries to the file (merged with what is on disk now); a write failure only warns."""
        if not self.enabled or not self._dirty or not self._writable:
            return
        merged = self._read_file()
        merged.update(self._dirty)
        data = {"format": _FORMAT, "version": _VERSION, "unit": "ms per call", "entries": merged}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, json.dumps(data, sort_keys=True, indent=0).encode())
        except OSError as err:
            self._writable = False
            warnings.warn(f"cannot write the cost cache {self.path} ({err}); costs of this run are not kept",
                          RuntimeWarning, stacklevel=2)
            return
        self._loaded().update(merged)
        self._dirty.clear()

    def __len__(self) -> int:
        return len(self._loaded())

    def __repr__(self) -> str:
        return (f"CostCache(path={str(self._path) if self._path else None!r}, enabled={self.enabled}, "
                f"measured={self.measured}, hits={self.hits})")


def _valid_ms(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 and value == value
