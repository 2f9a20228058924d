"""How fast the model reads a prompt on this machine, so the evidence budget fits the time a person will wait.

Measured on real prompts (llama.cpp's own count of the tokens it evaluated, over the seconds to the first token),
smoothed, and kept per model and machine in a small JSON file in the data dir; or fixed by a setting.
"""

from __future__ import annotations

import json
import os
import platform
import threading
from pathlib import Path

__all__ = ["MIN_MEASURED_TOKENS", "PromptSpeed", "machine_key"]

#: Prompts shorter than this say more about fixed costs than about reading speed: not measured.
MIN_MEASURED_TOKENS = 256


def machine_key(model: str, *, n_gpu_layers: int = 0, n_threads: int | None = None, base_url: str | None = None) -> str:
    """The model and what decides its speed here: this machine (or the server), its threads and GPU layers."""
    where = base_url or f"{platform.node()}/{platform.machine()}/{os.cpu_count()}cpu"
    return f"{model}|{where}|threads={n_threads or 'auto'}|gpu_layers={n_gpu_layers}"


class PromptSpeed:
    """Prompt tokens per second of one model on one machine: ``fixed`` if given, else the measured figure.

    ``path``: the JSON file the figures are kept in (None: this process only)."""

    def __init__(self, key: str, *, path: Path | None = None, fixed: float | None = None) -> None:
        self.key = key
        self.path = path
        self.fixed = fixed
        self._lock = threading.Lock()
        self._measured: float | None = None
        self._loaded = False

    def tokens_per_s(self) -> float | None:
        """The speed to size prompts by (None: not known yet; the first real prompt measures it)."""
        if self.fixed is not None:
            return self.fixed
        with self._lock:
            if not self._loaded:
                self._loaded = True
                self._measured = self._read().get(self.key)
            return self._measured

    def observe(self, tokens: int, seconds: float) -> None:
        """A prompt of ``tokens`` evaluated tokens took ``seconds`` to its first token."""
        if tokens < MIN_MEASURED_TOKENS or seconds <= 0:
            return
        speed = tokens / seconds
        with self._lock:
            if not self._loaded:
                self._loaded = True
                self._measured = self._read().get(self.key)
            # smoothed: one slow prompt (a busy machine) moves the figure halfway, not all the way
            self._measured = speed if self._measured is None else 0.5 * (self._measured + speed)
            self._write(self._measured)

    def _read(self) -> dict[str, float]:
        if self.path is None or not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # a damaged file is measured afresh
        return (
            {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)} if isinstance(data, dict) else {}
        )

    def _write(self, speed: float) -> None:
        if self.path is None:
            return
        figures = self._read()
        figures[self.key] = round(speed, 1)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(".tmp")
            temporary.write_text(json.dumps(figures, indent=1, sort_keys=True), encoding="utf-8")
            temporary.replace(self.path)
        except OSError:
            pass  # a read-only data dir: the figure lives in this process only
