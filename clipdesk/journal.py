"""One journal for every change clipdesk makes beside the user's photos, so undo is one mechanism.

Sidecars written or created (``tags write``), photos copied, moved or linked (``sort``), duplicates
moved to the desktop's Trash (``duplicates``): each run is an *operation*, planned in full first,
then applied step by step. The journal of an operation is one file of JSON lines,
``LIBRARY/journal/<id>.jsonl``, appended and fsynced line by line:

- ``header`` (kind, description), one ``step`` line per planned step, ``planned``;
- per step, ``begin`` (written *before* the change, with what is needed to recognise and revert
  it: the backup of a replaced sidecar, the hash of the new content, the temporary file used)
  and ``done`` (after it);
- ``finished`` when every step ran, ``undone`` when the operation was undone.

A kill -9 at any moment leaves at most one step begun and not done; what happened to it is read
from the file system (hashes, which of source and destination exist), never guessed. Undo replays
the steps backwards and only reverts a file that is still exactly what clipdesk made: a sidecar
edited since, or a photo changed since, is left alone and reported as a conflict. Undo is
idempotent, so an undo that is itself killed can be run again. A trash step's ``done`` records
where the freedesktop Trash put the file (found by the original path its ``.trashinfo`` records
and by content); undo moves it back only while it is that file and its old name is free. Where
the platform does not tell (macOS, Windows), the step says so and undo leaves the file there.

Every file change is atomic: new content goes to a temporary file in the same folder, is
fsynced, and is renamed over the target; moves never overwrite (``RENAME_NOREPLACE``, else a
hard link). The journal is untrusted input when read back: bounded lines, validated records,
no symbolic links followed inside the library, no pickle.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from clipdesk.errors import ClipdeskError, DiskFullError
from clipdesk.indexer.decode import file_hash
from clipdesk.indexer.errors import is_disk_full
from clipdesk.indexer.files import O_CLOEXEC, O_NOFOLLOW, check_library_entry, is_read_only_error, open_regular

JOURNAL_DIR = "journal"
MAX_LINE = 1 << 20  # bytes; a step line holds a few paths and keywords
MAX_JOURNAL_BYTES = 1 << 31
MAX_BACKUP_BYTES = 64 << 20  # a sidecar is kilobytes; anything bigger is not ours to back up
ACTIONS = frozenset({"write", "embed", "copy", "move", "link", "trash"})
# ``embed``: a photo whose embedded XMP is rewritten (``tags write --embedded``); its backup is the
# whole photo, so undo gives it back byte for byte. Only these kinds of files can be named there.
EMBED_EXTENSIONS = frozenset({".jpg", ".jpeg", ".tif", ".tiff", ".dng"})
MAX_EMBED_BYTES = 1 << 30
_CONTENT_ACTIONS = frozenset({"write", "embed"})  # steps that replace a file's content
REMOVE = b""  # as the new content of a ``write`` step: remove the file (a sidecar with nothing left in it)
CancelCheck = Callable[[], None]  # raises to stop (``CancelToken.check``)
_ID = re.compile(r"^\d{8}T\d{6}-[a-z]{1,16}-[0-9a-f]{6}$")
_RECORDS = frozenset({"header", "step", "planned", "begin", "done", "finished", "undone"})


class JournalError(ClipdeskError):
    """A journal that cannot be read or written (damaged, a symbolic link, disk full)."""


class NothingToUndoError(JournalError):
    """No operation of that kind is left to undo."""


class TrashError(JournalError):
    """A file could not be moved to the Trash (it stays where it was)."""


@dataclass
class Step:
    """One planned change. ``path`` is the file it creates or replaces (sidecar or destination)."""

    n: int
    action: str  # write | copy | move | link
    path: str
    source: str | None = None  # the photo a copy/move/link starts from
    info: dict = field(default_factory=dict)  # what the caller needs to apply it (keywords…)
    state: str = "planned"  # planned | begun | done
    applied: dict = field(default_factory=dict)  # the ``begin`` record: how to recognise/revert it

    @property
    def target(self) -> str:
        """Where the change really went (a collision found at apply time picks another name)."""
        return self.applied.get("path", self.path)


@dataclass
class Conflict:
    path: str
    reason: str

    def as_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass
class UndoReport:
    operation: str
    kind: str
    reverted: int = 0
    conflicts: list[Conflict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"operation": self.operation, "kind": self.kind, "reverted": self.reverted,
                "conflicts": [c.as_dict() for c in self.conflicts]}


# ---------------------------------------------------------------------- file primitives
def sha256_file(path: str, limit: int = MAX_BACKUP_BYTES) -> str | None:
    """SHA-256 of a regular file (not followed if a link), None when there is none."""
    data = read_bounded(path, limit)
    return None if data is None else hashlib.sha256(data).hexdigest()


def read_bounded(path: str, limit: int) -> bytes | None:
    """The bytes of regular file ``path``, None if it does not exist. Raises :class:`OSError` for a
    link, a non-regular file, or one over ``limit`` bytes (checked on the open descriptor)."""
    try:
        fd = open_regular(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise OSError(errno.EFBIG, f"file of {size} bytes, over the {limit} byte limit", path)
        return f.read(limit + 1)[:limit]


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the rename itself is still atomic
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, tmp: str, sync_folder: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically through the temporary file ``tmp`` (same folder).

    The temporary name is chosen by the caller and journaled, so a kill leaves nothing that
    recovery cannot find. ``O_EXCL | O_NOFOLLOW``: a link planted at the name is never followed.
    """
    mode = 0o644
    try:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
    except OSError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise
    if sync_folder:  # makes the rename itself survive a power cut, not only a kill
        _fsync_dir(os.path.dirname(path))


def _unlink_quiet(path: str | None) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_libc = None


def rename_noreplace(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst`` without ever replacing an existing ``dst`` (:class:`FileExistsError`).

    Linux ``renameat2(RENAME_NOREPLACE)`` where the file system supports it, else a hard link and
    an unlink (a kill between the two leaves both names on one file, which recovery resolves),
    else a check and a plain rename. ``OSError(EXDEV)`` across file systems.
    """
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            _libc.renameat2  # noqa: B018 - glibc >= 2.28
        except (OSError, AttributeError):
            _libc = False
    if _libc:
        r = _libc.renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE)
        if r == 0:
            return
        e = ctypes.get_errno()
        if e not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise OSError(e, os.strerror(e), src, None, dst)
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if os.path.lexists(dst):
            raise FileExistsError(errno.EEXIST, "file exists", dst) from None
        os.rename(src, dst)
        return
    os.unlink(src)


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _fingerprint(path: str) -> str | None:
    try:
        return file_hash(path)
    except OSError:
        return None


def _user_error(e: OSError, what: str) -> ClipdeskError:
    if is_disk_full(e):
        return DiskFullError(f"The disk is full: cannot {what}. Nothing was lost; free some space and "
                             "run the same command with --resume, or undo what was done.")
    if is_read_only_error(e):
        return JournalError(f"Cannot {what}: permission denied or read-only folder ({e.strerror}).")
    return JournalError(f"Cannot {what}: {e.strerror or e}.")


# ---------------------------------------------------------------------- the desktop's Trash
TRASHINFO_BYTES = 64 << 10


def _trash_dirs(path: str) -> list[tuple[str, str]]:
    """``(top folder, trash folder)`` pairs where a freedesktop Trash may have put ``path``: the
    home Trash (``$XDG_DATA_HOME/Trash``, as ``send2trash`` read it), then its volume's Trashes."""
    try:
        from send2trash import plat_other  # reads XDG_DATA_HOME once, at import, like send2trash

        xdg, home = os.fsdecode(plat_other.XDG_DATA_HOME), os.fsdecode(plat_other.HOMETRASH_B)
    except (ImportError, AttributeError):
        xdg = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
        home = os.path.join(xdg, "Trash")
    mount = os.path.realpath(os.path.dirname(path))
    while not os.path.ismount(mount) and os.path.dirname(mount) != mount:
        mount = os.path.dirname(mount)
    uid = str(os.getuid())
    return [(xdg, home), (mount, os.path.join(mount, ".Trash", uid)), (mount, os.path.join(mount, f".Trash-{uid}"))]


def _trashinfo_path(info: str, top: str) -> str | None:
    """The original path a ``.trashinfo`` file records (absolute), None if it is not one."""
    from urllib.parse import unquote

    try:
        data = read_bounded(info, TRASHINFO_BYTES)
    except OSError:
        return None
    for line in (data or b"").decode("utf-8", "replace").splitlines():
        if line.startswith("Path="):
            p = unquote(line[5:].strip(), errors="surrogateescape")
            return os.path.normpath(p if os.path.isabs(p) else os.path.join(top, p))
    return None


def trash_location(path: str, fingerprint: str | None) -> tuple[str, str] | None:
    """Where the desktop's Trash keeps ``path`` now: ``(file, .trashinfo)``, or None when that
    cannot be known (not a freedesktop Trash: macOS, Windows; or no entry matches).

    The freedesktop Trash names the file after the original (``name.jpg``, ``name 1.jpg``…) in
    ``files/`` with ``info/<name>.trashinfo`` recording the original path; the newest entry whose
    recorded path is ``path`` and whose content is the same file is it."""
    if sys.platform in ("darwin", "win32"):
        return None
    path = os.path.abspath(path)
    name = os.path.basename(path)
    base, ext = os.path.splitext(name)
    found = []
    for top, trash in _trash_dirs(path):
        files, info = os.path.join(trash, "files"), os.path.join(trash, "info")
        for counter in range(10_000):
            cand = name if counter == 0 else f"{base} {counter}{ext}"
            f, i = os.path.join(files, cand), os.path.join(info, cand + ".trashinfo")
            if not os.path.lexists(f) and not os.path.lexists(i):
                break
            if os.path.lexists(f) and not os.path.islink(f) and _trashinfo_path(i, top) == path \
                    and _fingerprint(f) == fingerprint:
                try:
                    found.append((os.lstat(i).st_mtime_ns, f, i))
                except OSError:
                    continue
    if not found:
        return None
    _, f, i = max(found)
    return f, i


def _trash_record(rec: dict, journal_path: str) -> dict:
    """The Trash location of a ``done`` record of a trash step, checked (undo moves that file)."""
    where, info = rec.get("trashed"), rec.get("trashinfo")
    if where is None:
        return {"trashed": None, "trashinfo": None}
    if not (isinstance(where, str) and os.path.isabs(where) and "\x00" not in where
            and os.path.basename(os.path.dirname(where)) == "files"
            and info == os.path.join(os.path.dirname(os.path.dirname(where)), "info",
                                     os.path.basename(where) + ".trashinfo")):
        raise JournalError(f"The journal {journal_path} is damaged (bad Trash location).")
    return {"trashed": where, "trashinfo": info}


# ---------------------------------------------------------------------- the journal
class Journal:
    """The journal folder of one library."""

    def __init__(self, library_folder: str):
        self.folder = os.path.join(os.path.abspath(library_folder), JOURNAL_DIR)

    def _ensure(self) -> None:
        if not check_library_entry(self.folder, "dir"):
            try:
                os.mkdir(self.folder)
            except FileExistsError:
                check_library_entry(self.folder, "dir")
            except OSError as e:
                raise _user_error(e, f"create the journal folder {self.folder}") from None

    def _file(self, op_id: str) -> str:
        if not _ID.match(op_id):
            raise JournalError(f"Not an operation id: {op_id!r}.")
        return os.path.join(self.folder, op_id + ".jsonl")

    def ids(self) -> list[str]:
        """Operation ids, oldest first (ids start with their UTC time)."""
        if not check_library_entry(self.folder, "dir"):
            return []
        return sorted(n[:-6] for n in os.listdir(self.folder) if n.endswith(".jsonl") and _ID.match(n[:-6]))

    def start(self, kind: str, description: str, steps: Iterable[dict], meta: dict | None = None) -> Operation:
        """Journal a complete plan (nothing is changed yet) and return the operation to apply it.

        ``meta``: small JSON facts the caller needs again at undo time."""
        self._ensure()
        op_id = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{kind}-{secrets.token_hex(3)}"
        op = Operation(self, op_id, kind, description, time.time())
        op.meta = dict(meta or {})
        path = self._file(op_id)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0o644)
        except OSError as e:
            raise _user_error(e, f"write the journal {path}") from None
        op._fd = fd
        lines = [{"type": "header", "v": 1, "id": op_id, "kind": kind, "description": description,
                  "created": op.created, "meta": op.meta}]
        for n, s in enumerate(steps):
            if s["action"] not in ACTIONS:
                raise ValueError(s["action"])
            step = Step(n, s["action"], s["path"], s.get("source"), dict(s.get("info", {})))
            op.steps.append(step)
            lines.append({"type": "step", "n": n, "action": step.action, "path": step.path,
                          "source": step.source, "info": step.info})
        lines.append({"type": "planned"})
        try:
            op._append_many(lines)
        except BaseException:
            op.close()  # a plan that did not reach the disk whole is ignored when read back
            raise
        op.planned = True
        return op

    def load(self, op_id: str) -> Operation:
        path = self._file(op_id)
        try:
            fd = open_regular(path, follow_symlinks=False)
        except OSError as e:
            raise JournalError(f"Cannot read the journal {path}: {e.strerror or e}.") from None
        with os.fdopen(fd, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_JOURNAL_BYTES:
                raise JournalError(f"The journal {path} is too large to be a clipdesk journal.")
            return Operation._parse(self, op_id, _lines(f, path))

    def operations(self, kind: str | None = None, strict: bool = False) -> list[Operation]:
        """Operations oldest first. A damaged journal is left out, or with ``strict`` raises: undo
        must not skip over a newer operation it cannot read."""
        out = []
        for op_id in self.ids():
            try:
                op = self.load(op_id)
            except JournalError as e:
                if strict:
                    raise JournalError(f"{e} Undo a specific operation with --operation ID, or move "
                                       "the damaged journal file out of the journal folder.") from None
                continue
            if kind is None or op.kind == kind:
                out.append(op)
        return sorted(out, key=lambda op: (op.created, op.id))  # ids have one-second resolution

    def latest(self, kind: str, op_id: str | None = None) -> Operation:
        """The operation to undo: ``op_id``, else the newest of ``kind`` not undone yet."""
        if op_id:
            op = self.load(op_id)
            if op.kind != kind:
                raise JournalError(f"Operation {op_id} is a '{op.kind}' operation, not '{kind}'.")
            return op
        for op in reversed(self.operations(kind, strict=True)):
            if not op.undone and op.started:
                return op
        raise NothingToUndoError(f"Nothing to undo: no '{kind}' operation in {self.folder}.")

    def created_files(self, kind: str) -> set[str]:
        """Files that ``write`` steps of ``kind`` operations created, in operations not undone."""
        out = set()
        for op in self.operations(kind):
            if op.undone:
                continue
            out.update(s.applied["path"] for s in op.steps if s.action == "write" and s.state == "done"
                       and not s.applied.get("noop") and "before" in s.applied and s.applied["before"] is None)
        return out

    def interrupted(self, kind: str) -> Operation | None:
        """The newest operation of ``kind`` that stopped before its end (killed, cancelled, disk full)."""
        for op in reversed(self.operations(kind, strict=True)):
            if op.undone:
                return None
            if not op.finished:
                return op
            return None
        return None


def _lines(f, path: str) -> Iterator[dict]:
    while True:
        line = f.readline(MAX_LINE + 1)
        if not line:
            return
        if not line.endswith(b"\n"):
            if len(line) > MAX_LINE:
                raise JournalError(f"The journal {path} has a line over {MAX_LINE} bytes: damaged.")
            return  # a last line torn by a kill: the change it announced never started
        try:
            rec = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            raise JournalError(f"The journal {path} is damaged (a line is not JSON).") from None
        if not isinstance(rec, dict) or rec.get("type") not in _RECORDS:
            raise JournalError(f"The journal {path} is damaged (unknown record).")
        yield rec


def _str(rec: dict, key: str, optional: bool = False) -> str | None:
    v = rec.get(key)
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v or "\x00" in v:
        raise JournalError(f"A journal record has no valid '{key}'.")
    return v


def _abs(rec: dict, key: str, optional: bool = False) -> str | None:
    v = _str(rec, key, optional)
    if v is not None and not os.path.isabs(v):
        raise JournalError(f"A journal record holds a relative path: {v!r}.")
    return v


class Operation:
    """One journaled run: its plan, what was applied, and how to undo it."""

    def __init__(self, journal: Journal, op_id: str, kind: str, description: str, created: float):
        self.journal = journal
        self.id = op_id
        self.kind = kind
        self.description = description
        self.created = created
        self.steps: list[Step] = []
        self.planned = False
        self.finished = False
        self.undone = False
        self.meta: dict = {}
        self._fd: int | None = None

    # -------------------------------------------------------------- reading
    @classmethod
    def _parse(cls, journal: Journal, op_id: str, records: Iterator[dict]) -> Operation:
        op: Operation | None = None
        path = journal._file(op_id)
        for rec in records:
            t = rec["type"]
            if op is None:
                if t != "header" or rec.get("id") != op_id or rec.get("v") != 1:
                    raise JournalError(f"The journal {path} has no valid header.")
                created = rec.get("created")
                op = cls(journal, op_id, _str(rec, "kind"), str(rec.get("description", ""))[:1000],
                         float(created) if isinstance(created, (int, float)) else 0.0)
                meta = rec.get("meta", {})
                op.meta = meta if isinstance(meta, dict) else {}
                continue
            if t == "step":
                n, action = rec.get("n"), rec.get("action")
                info = rec.get("info", {})
                if n != len(op.steps) or action not in ACTIONS or not isinstance(info, dict) or op.planned:
                    raise JournalError(f"The journal {path} is damaged (bad step record).")
                op.steps.append(Step(n, action, _abs(rec, "path"), _abs(rec, "source", True), info))
                if (action in _CONTENT_ACTIONS) != (op.steps[-1].source is None):
                    raise JournalError(f"The journal {path} is damaged (bad step record).")
            elif t == "planned":
                op.planned = True
            elif t in ("begin", "done"):
                n = rec.get("n")
                if not op.planned or not isinstance(n, int) or not 0 <= n < len(op.steps):
                    raise JournalError(f"The journal {path} is damaged (a record names no step).")
                step = op.steps[n]
                if t == "begin":
                    target = _abs(rec, "path")
                    # Undo deletes and replaces files named here: only the names clipdesk itself
                    # would have used are accepted (sidecars for writes, its own temporary names).
                    if step.action == "write" and not target.lower().endswith(".xmp"):
                        raise JournalError(f"The journal {path} is damaged (a write to a non-sidecar).")
                    if step.action == "embed" and (os.path.splitext(target)[1].lower() not in EMBED_EXTENSIONS
                                                   or target != step.path):
                        raise JournalError(f"The journal {path} is damaged (an embedded write to another file).")
                    if step.action == "trash" and target != step.source:
                        raise JournalError(f"The journal {path} is damaged (a trash step names another file).")
                    if rec.get("tmp") is not None and rec.get("tmp") != op._tmp_name(target, n):
                        raise JournalError(f"The journal {path} is damaged (bad temporary name).")
                    backup = rec.get("backup")
                    if backup is not None and (not isinstance(backup, str) or not re.fullmatch(r"\d+\.bak", backup)):
                        raise JournalError(f"The journal {path} is damaged (bad backup name).")
                    dirs = rec.get("dirs", [])
                    if not isinstance(dirs, list) or not all(isinstance(d, str) and os.path.isabs(d) for d in dirs):
                        raise JournalError(f"The journal {path} is damaged (bad folder list).")
                    step.applied = rec
                    step.state = "begun"
                else:
                    step.state = "done"
                    if rec.get("noop"):
                        step.applied = {"path": step.path, "noop": True}
                    elif step.action == "trash":
                        step.applied = {**step.applied, **_trash_record(rec, path)}
            elif t == "finished":
                op.finished = True
            elif t == "undone":
                op.undone = True
        if op is None:
            raise JournalError(f"The journal {path} is empty.")
        if not op.planned:
            op.steps = []  # killed while planning: nothing was applied
        return op

    @property
    def started(self) -> bool:
        return any(s.state != "planned" for s in self.steps)

    def summary(self) -> dict:
        states = [s.state for s in self.steps]
        return {"operation": self.id, "kind": self.kind, "description": self.description,
                "steps": len(states), "done": states.count("done"), "finished": self.finished,
                "undone": self.undone}

    # -------------------------------------------------------------- writing
    def _append_many(self, records: list[dict], sync: bool = True) -> None:
        """Append records; ``sync`` fsyncs them. A ``begin`` must be on disk before its change
        starts; a ``done`` need not be (the next ``begin`` syncs it, and recovery reads a lost
        one back from the file system), which halves the syncs per step."""
        data = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
        if self._fd is None:
            path = self.journal._file(self.id)
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | O_NOFOLLOW | O_CLOEXEC)
            except OSError as e:
                raise _user_error(e, f"write the journal {path}") from None
        start = None
        try:
            start = os.lseek(self._fd, 0, os.SEEK_END)
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            if sync:
                os.fsync(self._fd)
        except OSError as e:
            # A record torn by a full disk would fuse with the next one appended once space is
            # freed (--resume, undo) into a line that is not JSON: the journal ends where it did.
            if start is not None:
                try:
                    os.ftruncate(self._fd, start)
                except OSError:
                    pass
            raise _user_error(e, f"write the journal {self.journal._file(self.id)}") from None

    def _append(self, **record) -> None:
        self._append_many([record])

    def _done(self, step: Step, **extra) -> None:
        self._append_many([{"type": "done", "n": step.n, **extra}], sync=False)
        step.state = "done"

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Operation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _backup_dir(self) -> str:
        return os.path.join(self.journal.folder, self.id)

    def _tmp_name(self, path: str, n: int) -> str:
        return os.path.join(os.path.dirname(path), f".{os.path.basename(path)[:120]}.clipdesk-{self.id[-6:]}-{n}.tmp")

    def finish(self) -> None:
        self._append(type="finished")
        self.finished = True

    def pending(self) -> list[Step]:
        """Steps still to apply, after settling a step a kill left half-way (see :meth:`recover`)."""
        return [s for s in self.steps if s.state != "done"]

    # -------------------------------------------------------------- applying
    def skip(self, step: Step) -> None:
        """Mark a step done without changing anything (nothing left to do for it)."""
        self._done(step, noop=True)
        step.applied = {"path": step.path, "noop": True}

    def write_file(self, step: Step, data: bytes | None) -> None:
        """Apply a ``write`` step: replace or create ``step.path`` with ``data`` (None: no change)."""
        try:
            old = read_bounded(step.path, MAX_BACKUP_BYTES)
        except OSError as e:
            raise JournalError(f"Cannot back up {step.path} before changing it: {e.strerror or e}.") from None
        self.write_files([(step, old, data)])

    def write_files(self, items: list[tuple[Step, bytes | None, bytes | None]],
                    cancel: CancelCheck | None = None, each: Callable[[Step], None] | None = None) -> None:
        """Apply ``write``/``embed`` steps ``(step, current bytes or None, new bytes, :data:`REMOVE` or None:
        no change)``.

        Backups first, then every ``begin`` record of the batch with one sync, then the atomic
        replacements: one journal sync per batch instead of one per file. A stop in between
        (cancel, error, kill) leaves some steps begun and not applied; recovery and undo see from
        the file's hash that nothing happened to them.
        """
        begins = []
        for step, old, data in items:
            if data is None:
                continue
            if step.action == "embed" and (old is None or data == REMOVE):
                raise ValueError("an embedded write replaces an existing photo's content, never removes it")
            backup = None
            if old is not None:
                backup = f"{step.n}.bak"
                folder = self._backup_dir()
                try:
                    if not check_library_entry(folder, "dir"):
                        os.mkdir(folder)
                    write_atomic(os.path.join(folder, backup), old, os.path.join(folder, f".{backup}.tmp"),
                                 sync_folder=False)
                except OSError as e:
                    raise _user_error(e, f"back up {step.path} into the journal") from None
            begins.append({"type": "begin", "n": step.n, "path": step.path, "tmp": self._tmp_name(step.path, step.n),
                           "backup": backup, "before": hashlib.sha256(old).hexdigest() if old is not None else None,
                           "after": hashlib.sha256(data).hexdigest() if data != REMOVE else None})
        if begins:
            _fsync_dir(self._backup_dir())
            self._append_many(begins)
        applied = {rec["n"]: rec for rec in begins}
        for step, _old, data in items:
            if step.n in applied:
                step.state, step.applied = "begun", applied[step.n]
        for step, _old, data in items:
            if cancel is not None:
                cancel()
            if data is None:
                self.skip(step)
            else:
                try:
                    if data == REMOVE:
                        try:
                            os.unlink(step.path)
                        except FileNotFoundError:
                            pass
                    else:
                        write_atomic(step.path, data, step.applied["tmp"], sync_folder=False)
                except OSError as e:
                    raise _user_error(e, f"{'remove' if data == REMOVE else 'write'} {step.path}") from None
                self._done(step)
            if each is not None:
                each(step)

    def place_file(self, step: Step, on_move: Callable[[str, str], None] | None = None) -> str:
        """Apply a ``copy``, ``move`` or ``link`` step; returns the destination actually used.

        Never overwrites: a name taken since planning gets the next free suffix. Folders created on
        the way are journaled so undo removes them again when they are empty.
        """
        src = step.source
        dst, dirs = self._free_name(step.path), self._missing_dirs(os.path.dirname(step.path))
        tmp = self._tmp_name(dst, step.n) if step.action in ("copy", "move") else None
        rec = {"type": "begin", "n": step.n, "path": dst, "tmp": tmp, "dirs": dirs,
               "fingerprint": _fingerprint(src) if step.action != "link" else None}
        self._append(**rec)
        step.state, step.applied = "begun", rec
        try:
            for d in dirs:
                os.mkdir(d)
            if step.action == "link":
                os.symlink(src, dst)
            elif step.action == "copy":
                self._copy(src, dst, tmp)
            else:
                try:
                    rename_noreplace(src, dst)
                except OSError as e:
                    if e.errno != errno.EXDEV:
                        raise
                    self._copy(src, dst, tmp)  # another file system: copy, then remove the original
                    os.unlink(src)
        except FileExistsError:
            raise JournalError(f"{dst} appeared while it was being written; nothing was overwritten. "
                               "Run the command again with --resume.") from None
        except OSError as e:
            raise _user_error(e, f"{step.action} {src} to {dst}") from None
        if step.action == "move" and on_move is not None:
            on_move(src, dst)
        self._done(step)
        return dst

    def trash_file(self, step: Step, trash: Callable[[str], None]) -> str | None:
        """Apply a ``trash`` step: move ``step.source`` to the desktop's Trash with ``trash``
        (``send2trash``); returns where the Trash keeps it, None where that cannot be known (then
        undo cannot bring it back and says so). Raises :class:`TrashError` when it did not move."""
        src = step.source
        rec = {"type": "begin", "n": step.n, "path": src, "fingerprint": _fingerprint(src)}
        self._append(**rec)
        step.state, step.applied = "begun", rec
        try:
            trash(src)
        except Exception as e:  # noqa: BLE001 - send2trash raises OSError or its own TrashPermissionError
            if os.path.lexists(src):
                self.skip(step)  # it did not move (a gone file stays begun: recovery finds it)
            raise TrashError(f"could not be moved to the Trash ({e})") from None
        where = trash_location(src, rec["fingerprint"])
        done = {"trashed": where[0] if where else None, "trashinfo": where[1] if where else None}
        self._done(step, **done)
        step.applied = {**rec, **done}
        return done["trashed"]

    @staticmethod
    def _copy(src: str, dst: str, tmp: str) -> None:
        fd = open_regular(src)
        try:
            with os.fdopen(fd, "rb") as fin, \
                    os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644),
                              "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
            shutil.copystat(src, tmp)
            os.link(tmp, dst, follow_symlinks=False)  # fails rather than overwrite a file there now
        finally:
            _unlink_quiet(tmp)
        _fsync_dir(os.path.dirname(dst))

    @staticmethod
    def _free_name(path: str) -> str:
        if not os.path.lexists(path):
            return path
        stem, ext = os.path.splitext(path)
        for i in range(1, 100_000):
            cand = f"{stem} ({i}){ext}"
            if not os.path.lexists(cand):
                return cand
        raise JournalError(f"No free name for {path}.")

    @staticmethod
    def _missing_dirs(folder: str) -> list[str]:
        missing = []
        while folder and not os.path.lexists(folder):
            missing.append(folder)
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
        return list(reversed(missing))

    # -------------------------------------------------------------- recovery and undo
    def recover(self, on_move: Callable[[str, str], None] | None = None) -> None:
        """Settle the step a kill left begun: mark it done if it completed, else plan it again.

        A move killed between its copy and the removal of the original finishes (the copy is
        complete and identical: the original goes); temporary files are removed.
        """
        for step in self.steps:
            if step.state != "begun":
                continue
            a = step.applied
            if step.action == "trash":
                if os.path.lexists(step.source) and _fingerprint(step.source) == a.get("fingerprint"):
                    step.state, step.applied = "planned", {}  # killed before it moved
                else:
                    where = trash_location(step.source, a.get("fingerprint"))
                    done = {"trashed": where[0] if where else None, "trashinfo": where[1] if where else None}
                    self._done(step, **done)
                    step.applied = {**a, **done}
                continue
            _unlink_quiet(a.get("tmp"))
            dst = a["path"]
            if step.action in _CONTENT_ACTIONS:
                completed = sha256_file_quiet(dst, _limit(step)) == a.get("after")
            elif step.action == "link":
                completed = os.path.islink(dst) and os.readlink(dst) == step.source
            else:
                completed = os.path.lexists(dst) and _fingerprint(dst) == a.get("fingerprint")
                if completed and step.action == "move" and os.path.lexists(step.source):
                    if _same_file(step.source, dst) or _fingerprint(step.source) == a.get("fingerprint"):
                        os.unlink(step.source)
                    else:
                        completed = False  # a different file at the source: not ours to remove
                if completed and step.action == "move" and on_move is not None:
                    on_move(step.source, dst)
            if completed:
                self._done(step)
            else:
                self._remove_empty_dirs(a.get("dirs", []))
                step.state, step.applied = "planned", {}

    def undo(self, on_move: Callable[[str, str], None] | None = None,
             progress: Callable[[int, int], None] | None = None) -> UndoReport:
        """Revert every applied step, newest first; files changed since are kept and reported."""
        report = UndoReport(self.id, self.kind)
        applied = [s for s in self.steps if s.state != "planned" and not s.applied.get("noop")]
        for i, step in enumerate(reversed(applied)):
            try:
                conflict = self._undo_step(step, on_move)
            except OSError as e:
                raise _user_error(e, f"undo the change to {step.target}") from None
            if conflict:
                report.conflicts.append(Conflict(step.target, conflict))
            else:
                report.reverted += 1
            if progress:
                progress(i + 1, len(applied))
        self._append(type="undone")
        self.undone = True
        return report

    def _undo_step(self, step: Step, on_move) -> str | None:
        if step.action == "trash":
            return self._untrash(step)
        a = step.applied
        dst = a["path"]
        _unlink_quiet(a.get("tmp"))
        conflict = None
        if step.action in _CONTENT_ACTIONS:
            current = sha256_file_quiet(dst, _limit(step))
            if current == a.get("before"):
                pass  # never written, or already restored
            elif current != a.get("after"):
                conflict = "changed since clipdesk wrote it; left as it is"
            elif a.get("backup") is None:
                if step.action == "embed":
                    return "its backup in the journal is missing; left as it is"
                os.unlink(dst)
            else:
                backup = os.path.join(self._backup_dir(), a["backup"])
                check_library_entry(self._backup_dir(), "dir")
                data = read_bounded(backup, _limit(step))
                if data is None or hashlib.sha256(data).hexdigest() != a.get("before"):
                    return "its backup in the journal is missing or damaged; left as it is"
                write_atomic(dst, data, self._tmp_name(dst, step.n))
            if conflict is None and sha256_file_quiet(dst, _limit(step)) != a.get("before"):
                conflict = "could not be restored: it is not what it was before clipdesk wrote it"
        elif step.action == "link":
            if os.path.islink(dst) and os.readlink(dst) == step.source:
                os.unlink(dst)
            elif os.path.lexists(dst):
                conflict = "replaced since clipdesk made the link; left as it is"
        elif step.action == "copy":
            if os.path.lexists(dst):
                if _fingerprint(dst) != a.get("fingerprint"):
                    conflict = "changed since clipdesk copied it; left as it is"
                elif _fingerprint(step.source) != a.get("fingerprint"):
                    conflict = f"the original {step.source} is gone or changed, so this copy is kept"
                else:
                    os.unlink(dst)
        else:  # move
            src = step.source
            if os.path.lexists(dst):
                if os.path.lexists(src):
                    if _same_file(src, dst) or _fingerprint(src) == _fingerprint(dst):
                        os.unlink(dst)  # a kill left both names: the original stays
                    else:
                        conflict = f"a different file now exists at {src}; the photo stays at {dst}"
                else:
                    try:
                        rename_noreplace(dst, src)
                    except OSError as e:
                        if e.errno != errno.EXDEV:
                            raise
                        self._copy(dst, src, self._tmp_name(src, step.n))
                        os.unlink(dst)
                    if on_move is not None:
                        on_move(dst, src)
            elif not os.path.lexists(src):
                conflict = f"the photo is at neither {src} nor {dst} (moved or deleted since)"
        if conflict is None:
            self._remove_empty_dirs(a.get("dirs", []))
        return conflict

    def _untrash(self, step: Step) -> str | None:
        """Move a trashed photo back to where it was, if that name is free (never overwrites)."""
        a, src = step.applied, step.source
        where, fingerprint = a.get("trashed"), a.get("fingerprint")
        back = os.path.lexists(src) and _fingerprint(src) == fingerprint
        if where is None:
            return None if back else ("cannot be brought back from here: where the desktop's Trash keeps it is "
                                      "not known on this platform; restore it from the Trash")
        if not os.path.lexists(where):
            return None if back else f"no longer in the Trash at {where} (emptied or restored since)"
        if os.path.islink(where) or _fingerprint(where) != fingerprint:
            return f"the file in the Trash at {where} is not the one clipdesk moved there; left in the Trash"
        if os.path.lexists(src):
            return f"a file now exists at {src}; the photo stays in the Trash at {where} (nothing is overwritten)"
        os.makedirs(os.path.dirname(src), exist_ok=True)
        try:
            rename_noreplace(where, src)
        except FileExistsError:
            return f"a file now exists at {src}; the photo stays in the Trash at {where} (nothing is overwritten)"
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            self._copy(where, src, self._tmp_name(src, step.n))  # the Trash of another volume
            os.unlink(where)
        info = a.get("trashinfo")
        if info and os.path.basename(os.path.dirname(info)) == "info":
            _unlink_quiet(info)
        return None

    @staticmethod
    def _remove_empty_dirs(dirs: list[str]) -> None:
        for d in reversed(dirs):
            try:
                os.rmdir(d)  # only ever removes an empty folder it created
            except OSError:
                return


def _limit(step: Step) -> int:
    return MAX_EMBED_BYTES if step.action == "embed" else MAX_BACKUP_BYTES


def sha256_file_quiet(path: str, limit: int = MAX_BACKUP_BYTES) -> str | None:
    try:
        return sha256_file(path, limit)
    except OSError:
        return "unreadable"
