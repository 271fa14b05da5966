"""Guards of a run directory: where it may be written, one process at a time in it, and what an interrupted run
says it kept.

- `check_location` refuses, in one line and before anything is written, an output location that is empty, not a
  directory, not writable, or has a name longer than the filesystem allows (`results_dir`, `run.dir`, `merge
  --out`); `check_not_other_runs` a run dir inside another run's dir or holding other runs.
- `locked(run_dir)` holds `run_dir/.lock` (fcntl.flock, non-blocking) while a run writes the dir; a second process
  is refused in one line naming the holder's pid. The kernel drops the lock with the process, even on SIGKILL, so
  a crashed run never leaves the dir locked; the file itself stays (removing it would race with a waiting opener).
- `Interrupted` is the KeyboardInterrupt (Ctrl-C, or SIGTERM as Slurm sends it) of a run, carrying the one line the
  CLI prints and its exit code (128 + the signal number); `kept_message` writes that line from what the method keeps
  (finished chunks, or nothing until it ends).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from circuitlab.errors import CircuitlabError, ConfigError

log = logging.getLogger("circuitlab")
LOCK_FILE = ".lock"


def check_location(field: str, value, writable: bool = True) -> Path:
    """An output directory: not empty, not a file, and (`writable`) writable: itself, or the nearest ancestor that
    exists."""
    text = "" if value is None else str(value)
    if not text.strip():
        raise ConfigError(field, "(empty)", "a directory to write into (an empty value would write under the filesystem root "
                          "or the working directory)")
    path = Path(text).expanduser()
    check_name_lengths(field, path)
    if path.exists() and not path.is_dir():
        raise CircuitlabError(f"{field}={text}: not a directory (a file is there); name a directory")
    existing = path
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise CircuitlabError(f"{field}={text}: cannot be created ({existing} is a file, not a directory)")
    if writable and not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" ({existing} is not writable)"
        raise CircuitlabError(f"{field}={text}: cannot be written{where}; name a directory you can write")
    return path


NAME_MAX, PATH_MAX = 255, 4096  # bytes in one file name, in a whole path (Linux; macOS: 255, 1024)


def shortened(text: str, keep: int = 60) -> str:
    """A long name as its start, an ellipsis and its length (messages stay one readable line)."""
    return text if len(text) <= keep else f"{text[:keep - 20]}...({len(text)} characters)"


def check_name_lengths(field: str, path: Path) -> None:
    """Each name in `path` fits the filesystem (NAME_MAX bytes), and the whole path PATH_MAX: refused in one line,
    before the filesystem is asked (it raises ENAMETOOLONG)."""
    text = str(path)
    if len(os.fsencode(text)) > PATH_MAX:
        raise CircuitlabError(f"{field}={shortened(text)}: the path is {len(os.fsencode(text))} bytes, longer than the {PATH_MAX} a "
                              "path may have; name a shorter one")
    for part in Path(text).parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise CircuitlabError(f"{field}={shortened(text)}: the name {shortened(part, 40)!r} is {len(os.fsencode(part))} bytes, longer "
                                  f"than the {NAME_MAX} a file name may have; name a shorter one")


RUN_RECORDS = ("manifest.json", "run_config.json")  # a dir holding one of these is a run's (finished, or started)
SCAN_DEPTH, SCAN_ENTRIES = 4, 20_000  # how deep and how much of a dir `check_not_other_runs` looks into


def check_not_other_runs(field: str, run_dir: Path) -> None:
    """A run dir is one run's: refused, in one line, when it lies inside another run's dir, or holds other runs
    below it (a results_dir, a multirun dir: its index would stop listing them once this run's files land there).
    Looks SCAN_DEPTH levels down, at most SCAN_ENTRIES entries (results_dir/NAME/TIMESTAMP/manifest.json is 3)."""
    run_dir = Path(run_dir).expanduser().absolute()
    for parent in run_dir.parents:
        found = next((parent / name for name in RUN_RECORDS if (parent / name).is_file()), None)
        if found is not None:
            raise CircuitlabError(f"{field}={run_dir}: lies inside the run dir {parent} (it holds {found.name}); choose a dir outside it")
    if not run_dir.is_dir():
        return
    seen, level = 0, [run_dir]
    for _ in range(SCAN_DEPTH):
        below = []
        for directory in level:
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                seen += 1
                if seen > SCAN_ENTRIES:
                    return
                if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                    below.append(Path(entry.path))
                elif directory != run_dir and entry.name in RUN_RECORDS:
                    raise CircuitlabError(f"{field}={run_dir}: holds other runs (e.g. {Path(entry.path).relative_to(run_dir)}); "
                                          "a run dir is one run's: choose a new dir, or one made by the same command")
        level = below


def probe_writable(field: str, path: Path) -> None:
    """`path` can be made and written: made (with its missing parents), a temp file written in it, then everything
    the probe made removed again; one line naming the field when that fails (e.g. under /proc, or a full disk)."""
    import tempfile

    path, made = Path(path).expanduser(), []
    try:
        missing = [path, *path.parents]
        for directory in reversed([d for d in missing if not d.exists()]):
            directory.mkdir()
            made.append(directory)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe."):
            pass
    except OSError as err:
        raise CircuitlabError(f"{field}={path}: cannot be written ({err.strerror}); name a directory you can write") from None
    finally:
        for directory in reversed(made):
            with contextlib.suppress(OSError):
                directory.rmdir()


def holder(run_dir: Path) -> int | None:
    """The pid holding `run_dir`'s lock (0 when it cannot be read), or None when no process holds it. Reads only:
    the dir is left as it was."""
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        import fcntl

        try:
            if not _flock(fd):
                return _pid(path)
        except OSError:  # a filesystem without locks: nothing can be known
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _flock(fd: int, tries: int = 20, wait: float = 0.05) -> bool:
    """Take the exclusive lock without blocking; False when another process holds it. A few short retries, since
    `holder` holds it for a moment when it probes (a real holder keeps it for its whole run)."""
    import fcntl
    import time

    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt < tries - 1:
                time.sleep(wait)
    return False


def _pid(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def in_use(run_dir: Path, pid: int) -> CircuitlabError:
    who = f"pid {pid}" if pid else "pid unknown"
    return CircuitlabError(f"run.dir={run_dir} is in use by another circuitlab process ({who}); wait for it to finish, "
                           "or choose another run.dir")


def check_free(run_dir: Path) -> None:
    """Refuse, in one line, a run dir another process holds (nothing is written)."""
    pid = holder(run_dir)
    if pid is not None:
        raise in_use(run_dir, pid)


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir/.lock` while the block runs (created when missing; it then records this process's pid)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            if not _flock(fd):
                raise in_use(run_dir, _pid(run_dir / LOCK_FILE))
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            log.warning("%s: this filesystem cannot lock files (%s); running without the run dir lock", run_dir, err.strerror)
        else:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the lock


def remove_stale_temps(directory: Path) -> None:
    """Temp files of atomic writes (`.NAME.XXXXXXXX.tmp`) that a killed process left behind. Call under `locked`:
    no other process can be writing them then."""
    if Path(directory).is_dir():
        for stale in Path(directory).glob(".*.tmp*"):
            if stale.is_file():
                with contextlib.suppress(OSError):
                    stale.unlink()


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run: `message` is the one line to print, `signum` the signal."""

    def __init__(self, message: str | None = None, signum: int = signal.SIGINT):
        super().__init__(message)
        self.message, self.signum = message, signum

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)


def clear_progress_bars() -> None:
    """Take the open tqdm bars off the terminal, so that the interrupted line stands alone on stderr."""
    try:
        from tqdm import tqdm
    except ImportError:
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        with contextlib.suppress(Exception):
            bar.leave = False
            bar.close()


def interrupted_by(err: BaseException) -> int:
    return int(getattr(err, "signum", signal.SIGINT))


def kept_message(run_dir: Path, signum: int, kept: int, finished: bool = False, keeps_chunks: bool = True, method: str = "") -> str:
    """The one line an interrupted run prints: what is kept in `run_dir` and what a rerun does. `keeps_chunks`: whether
    the method keeps finished chunks (a rerun into the dir loads them) or nothing until it ends (a rerun starts over)."""
    what = "interrupted" if signum == signal.SIGINT else f"terminated ({signal.Signals(signum).name})"
    setting = resume_setting(run_dir)
    if kept:
        done = " (the sweep had finished; its results were being written)" if finished else ""
        return f"{what}: {kept} finished chunk{'s' if kept != 1 else ''} kept in {run_dir}{done}; rerun the same command with {setting} to resume"
    again = f"rerun the same command to start over ({setting} reuses that dir)"
    if keeps_chunks:
        return f"{what}: no chunk had finished, so nothing is kept in {run_dir}; {again}"
    who = f"method={method}" if method else "this method"
    if finished:
        return f"{what} while its results were being written: {who} keeps no partial results, so they are lost; {again}"
    return f"{what}: {who} keeps no partial results (it writes them when it ends), so nothing is kept in {run_dir}; {again}"


SWEEP_RECORD = "multirun.yaml"  # Hydra writes it into a multirun's sweep dir before the first job starts


def resume_setting(run_dir: Path) -> str:
    """The override that reruns into `run_dir`: `hydra.sweep.dir=SWEEP` for a job of a multirun (its sweep dir, the
    nearest one above holding Hydra's multirun.yaml; under -m, run.dir= is ignored), else `run.dir=RUN_DIR`."""
    run_dir = Path(run_dir)
    sweep = next((parent for parent in run_dir.parents if (parent / SWEEP_RECORD).is_file()), None)
    return f"hydra.sweep.dir={sweep}" if sweep is not None else f"run.dir={run_dir}"


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (what Slurm and `kill` send) raises Interrupted like Ctrl-C does, while the block runs (main thread
    only; the previous handler is restored)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(None, signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


START_OVER = "choose another run.dir, or run.resume=false to start that dir over"


def read_record(path: Path):
    """A JSON record the run dir keeps (run_config.json, inputs.json): None when it is not there; one line when it is
    damaged."""
    import json

    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise CircuitlabError(f"{path}: damaged (not JSON); {START_OVER}") from None
