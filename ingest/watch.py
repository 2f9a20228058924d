"""Folders kept in sync with a collection: file events become incremental runs of the ingest pipeline.

>>> watcher = FolderWatcher(["./docs"], lambda paths, gone: pipeline.run(paths, gone=gone), on_run=print)
>>> watcher.start()          # a background thread: one full sync, then events
>>> watcher.stop()           # at shutdown; a run in progress finishes first

The watcher decides only *when* to ingest and *what*: the pipeline it is handed does the work, incremental and
crash-safe per file, so an interrupted sync is repaired by the next one (the first thing a watcher does is a full
sync of its folders). Events come from `watchfiles` (inotify, FSEvents, ReadDirectoryChangesW; polling where
those do not work); bursts are debounced into one run, a file still being written waits until its size and mtime
hold still, editors' temporary files are never looked at, and a periodic full rescan catches what events missed
(network folders, an overflowing event queue, changes made through a hard link elsewhere).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ingest.discover import is_ignored_name, printable_path
from ingest.load import SUPPORTED_EXTENSIONS
from rag.errors import ConfigError, ModelMismatchError, ModelNotFoundError, RagError

if TYPE_CHECKING:
    from ingest.pipeline import IngestReport

__all__ = ["FolderWatcher", "IngestRun", "SyncRun"]

_log = logging.getLogger("rag.watch")

IngestRun = Callable[[Sequence[str], Sequence[str]], "IngestReport"]
"""One incremental ingest run: ``(paths, gone)`` → its report (``IngestPipeline.run(paths, gone=gone)``)."""

_LASTING = (ConfigError, ModelNotFoundError, ModelMismatchError)
"""Errors that no retry mends (a wrong setting, a missing model, another collection's model): the first sync
raises them instead of watching on."""

_RETRY_S = 30.0
"""A failed run (the store or a model server unreachable, say) is retried as a full sync this much later."""

_TICK_MS = 200
"""How often the watching loop wakes without events: to see a quiet period end, a file settle, a rescan fall due."""


@dataclass(frozen=True)
class SyncRun:
    """One run of the watcher: why, what it was handed, and what the pipeline reported (or the error)."""

    reason: Literal["start", "changes", "rescan"]
    """``start``: the full sync a watcher begins with; ``changes``: files its events named; ``rescan``: the
    periodic full sync."""
    paths: tuple[str, ...]
    """Files and folders handed to the run (the watched folders themselves for a full sync)."""
    gone: tuple[str, ...] = ()
    """Paths that vanished (deleted, renamed or moved away)."""
    report: IngestReport | None = None
    error: str | None = None
    """Why the run failed as a whole (a store that cannot be written, say); it is tried again later."""
    seconds: float = 0.0

    def summary(self) -> str:
        """One line for a log: what changed, what the run did, how long it took."""
        names = [os.path.basename(p) or p for p in (*self.paths, *self.gone)]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        if self.reason == "changes":
            what = f"{len(self.paths)} changed, {len(self.gone)} gone ({shown})"
        else:
            what = ("full sync" if self.reason == "start" else "full rescan") + f" of {shown}"
        if self.error is not None:
            return f"{what}: failed after {self.seconds:.1f} s: {self.error}; tried again in {_RETRY_S:.0f} s"
        report = self.report
        assert report is not None
        done = (
            f"{report.files_added} added, {report.files_updated} updated, {report.files_removed} removed, "
            f"{len(report.files_failed)} failed; chunks +{report.chunks_added} -{report.chunks_removed}, "
            f"{report.chunks_total} in all"
        )
        return f"{what}: {done}; {self.seconds:.1f} s"


@dataclass
class _Pending:
    """A path an event named, waiting for the burst to end and, for a file, for its writer to finish."""

    last_event: float
    signature: tuple[int, int] | None
    """(size, mtime) when it was last looked at; None: not a regular file then."""
    looked_at: float


@dataclass
class _Root:
    given: str
    """As the user named it (what the store records as a file's ``source``)."""
    absolute: str
    real: str
    """With symbolic links resolved: how the operating system may name it in events."""
    is_dir: bool = field(default=True)


class FolderWatcher:
    """Keeps the files under ``folders`` equal to what ``ingest`` (an :data:`IngestRun`) has stored.

    ``debounce_s``: events closer together than this are one burst, ingested in one run once it is over (at the
    latest ``max_wait_s`` after its first event, for folders that never fall quiet). ``settle_s``: a file is taken
    only once its size and mtime have held still this long (a download or a copy still writing waits).
    ``rescan_s``: a full sync this often, for changes no event reported (0: never). ``follow_links``: whether
    symbolic links inside the folders are followed (as the pipeline's own setting). ``on_run``: told of each run
    when it ends; ``on_start``: when it begins.
    """

    def __init__(
        self,
        folders: Sequence[str | os.PathLike[str]],
        ingest: IngestRun,
        *,
        debounce_s: float = 1.0,
        settle_s: float | None = None,
        rescan_s: float = 600.0,
        max_wait_s: float = 60.0,
        follow_links: bool = False,
        force_polling: bool | None = None,
        on_start: Callable[[SyncRun], None] | None = None,
        on_run: Callable[[SyncRun], None] | None = None,
    ) -> None:
        if not folders:
            raise ConfigError("nothing to watch: name at least one folder")
        self._roots: list[_Root] = []
        for folder in folders:
            given = os.fspath(folder)
            absolute = os.path.abspath(given)
            if not os.path.exists(absolute):
                raise ConfigError(f"{given}: no such file or folder to watch; create it or fix the path")
            self._roots.append(_Root(given, absolute, os.path.realpath(absolute), os.path.isdir(absolute)))
        self._ingest = ingest
        self.debounce_s = debounce_s
        self.settle_s = debounce_s if settle_s is None else settle_s
        self.rescan_s = rescan_s
        self.max_wait_s = max_wait_s
        self.follow_links = follow_links
        self.force_polling = force_polling
        self._on_start = on_start
        self._on_run = on_run
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.runs = 0
        """Runs made so far (the first full sync included)."""
        self.ready = threading.Event()
        """Set once the first full sync has ended (events from then on are handled as they come)."""

    @property
    def folders(self) -> list[str]:
        return [root.given for root in self._roots]

    # -- the life of a watcher -----------------------------------------------------------------------------
    def start(self) -> None:
        """Watch in a background thread until :meth:`stop`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run_logged, name="folder-watch", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop watching; a run in progress ends first (each file it writes is complete or not begun)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run_logged(self) -> None:
        try:
            self.run()
        except _LASTING as error:  # a background thread has no caller to raise to
            _log.error("watching %s stopped: %s", ", ".join(self.folders), error)
        except Exception:
            _log.exception("watching %s stopped", ", ".join(self.folders))

    def run(self, stop: threading.Event | None = None) -> None:
        """Watch in this thread until ``stop`` (or :meth:`stop`) is set: one full sync first, then a run per
        burst of changes and a full rescan every ``rescan_s``. A lasting error of the first sync (a wrong
        setting, a missing model) is raised; any other failed run is reported and tried again."""
        from watchfiles import watch

        stop_event = _Either(self._stop, stop) if stop is not None else self._stop
        pending: dict[str, _Pending] = {}
        first_event = last_event = 0.0
        next_rescan = float("inf")
        retry_at: float | None = None
        changes_stream = watch(
            *(root.absolute for root in self._roots),
            watch_filter=self._wanted,
            debounce=max(_TICK_MS, int(self.debounce_s * 1000)),
            step=50,
            rust_timeout=_TICK_MS,
            yield_on_timeout=True,
            stop_event=stop_event,
            force_polling=self.force_polling,
            ignore_permission_denied=True,
        )
        synced = False
        for changes in changes_stream:
            now = time.monotonic()
            for _, path in changes:
                if not pending:
                    first_event = now
                last_event = now
                pending[path] = _Pending(now, _signature(path), now)
            if not synced:  # watching has begun: what changes from now on is seen, so the full sync misses nothing
                run = self._sync("start", tuple(root.given for root in self._roots), (), raise_lasting=True)
                if run.error is not None:
                    retry_at = time.monotonic() + _RETRY_S
                synced = True
                self.ready.set()
                next_rescan = time.monotonic() + self.rescan_s if self.rescan_s > 0 else float("inf")
                continue
            if stop_event.is_set():
                break
            now = time.monotonic()
            quiet = now - last_event >= self.debounce_s
            if pending and (quiet or now - first_event >= self.max_wait_s):
                paths, gone = self._take_settled(pending, now)
                if paths or gone:
                    run = self._sync("changes", paths, gone)
                    if run.error is not None:
                        retry_at = time.monotonic() + _RETRY_S
                if pending:
                    first_event = min(p.last_event for p in pending.values())
            if time.monotonic() >= next_rescan or (retry_at is not None and time.monotonic() >= retry_at):
                run = self._sync("rescan", tuple(root.given for root in self._roots), ())
                retry_at = None if run.error is None else time.monotonic() + _RETRY_S
                next_rescan = time.monotonic() + self.rescan_s if self.rescan_s > 0 else float("inf")

    # -- what a burst hands the pipeline ----------------------------------------------------------------------
    def _wanted(self, change: object, path: str) -> bool:
        """watchfiles' filter: a path under a watched folder whose every part below it may hold documents."""
        found = self._locate(path)
        if found is None:
            return False
        relative = found[1]
        return relative == "." or not any(is_ignored_name(part) for part in relative.split(os.sep))

    def _locate(self, path: str) -> tuple[_Root, str] | None:
        for root in self._roots:
            for base in (root.absolute, root.real):
                if path == base or path.startswith(base.rstrip(os.sep) + os.sep):
                    return root, os.path.relpath(path, base)
        return None

    def _given(self, path: str) -> str:
        """``path`` as the user would write it: its watched folder as named, joined with the rest."""
        found = self._locate(path)
        if found is None:
            return path
        root, relative = found
        return root.given if relative == "." else os.path.normpath(os.path.join(root.given, relative))

    def _outside_by_link(self, path: str) -> bool:
        """A path that reaches its watched folder's inside through a symbolic link (not followed unless asked)."""
        found = self._locate(path)
        if found is None:
            return True
        root, relative = found
        return os.path.realpath(path) != os.path.normpath(os.path.join(root.real, relative))

    def _take_settled(self, pending: dict[str, _Pending], now: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Remove from ``pending`` and return what may be ingested now: files whose size and mtime held still for
        ``settle_s`` and folders (moved in, created) with no unsettled file inside; plus the paths that are gone.
        Files still changing stay pending."""
        files: list[str] = []
        folders: list[str] = []
        gone: list[str] = []
        unsettled: list[str] = []
        for path, waiting in list(pending.items()):
            try:
                info = os.stat(path) if self.follow_links else os.lstat(path)
            except FileNotFoundError:
                gone.append(path)
                del pending[path]
                continue
            except OSError as error:
                _log.warning("%s: cannot be looked at (%s); left as it is", printable_path(path), error)
                del pending[path]
                continue
            if stat.S_ISDIR(info.st_mode):
                folders.append(path)
            elif stat.S_ISREG(info.st_mode):
                signature = (info.st_size, info.st_mtime_ns)
                if signature != waiting.signature or now - waiting.looked_at < self.settle_s:
                    if signature != waiting.signature:
                        waiting.signature, waiting.looked_at = signature, now
                    unsettled.append(path)
                    continue
                files.append(path)
            else:  # a link not followed, a socket, a fifo: nothing to ingest there (any stored file goes)
                gone.append(path)
            del pending[path]
        held = [f for f in folders if any(u.startswith(f + os.sep) for u in unsettled)]
        for folder in held:  # walking it now would read the unsettled file half-written
            pending[folder] = _Pending(now, None, now)
        folders = [f for f in folders if f not in held]
        for path in files + folders:
            if not self.follow_links and self._outside_by_link(path):
                gone.append(path)
        kept_folders = [f for f in folders if f not in gone]
        # a folder is walked whole: the files and folders inside it need not be named again
        kept_folders = [f for f in kept_folders if not any(f.startswith(o + os.sep) for o in kept_folders)]
        kept_files = [
            f
            for f in files
            if f not in gone
            and os.path.splitext(f)[1].lower() in SUPPORTED_EXTENSIONS
            and not any(f.startswith(o + os.sep) for o in kept_folders)
        ]
        paths = tuple(self._given(p) for p in sorted(kept_files + kept_folders))
        return paths, tuple(self._given(p) for p in sorted(set(gone)))

    def _sync(
        self,
        reason: Literal["start", "changes", "rescan"],
        paths: tuple[str, ...],
        gone: tuple[str, ...],
        *,
        raise_lasting: bool = False,
    ) -> SyncRun:
        started = time.monotonic()
        run = SyncRun(reason, paths, gone)
        if self._on_start is not None:
            self._on_start(run)
        report = None
        error = None
        try:
            report = self._ingest(list(paths), list(gone))
        except _LASTING as problem:
            if raise_lasting:
                raise
            error = str(problem)
        except RagError as problem:
            error = str(problem)
        except Exception as problem:  # Chroma, SQLite and the disk raise anything; the watcher goes on
            error = f"{type(problem).__name__}: {problem}"
        self.runs += 1
        run = SyncRun(reason, paths, gone, report, error, time.monotonic() - started)
        _log_run(run)
        if self._on_run is not None:
            self._on_run(run)
        return run


class _Either:
    """Set when either event is: :meth:`FolderWatcher.stop` ends a :meth:`FolderWatcher.run` given its own."""

    def __init__(self, first: threading.Event, second: threading.Event) -> None:
        self._events = (first, second)

    def is_set(self) -> bool:
        return any(event.is_set() for event in self._events)


def _signature(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return (info.st_size, info.st_mtime_ns) if stat.S_ISREG(info.st_mode) else None


def _log_run(run: SyncRun) -> None:
    if run.error is not None:
        _log.error("%s", run.summary())
        return
    _log.info("%s", run.summary())
    assert run.report is not None
    for problem in run.report.files_failed:
        _log.warning("%s: %s", problem.path, problem.error)
