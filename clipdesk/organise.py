"""Sort photos into folders: each photo goes to ``DIR/<category>/`` by a probe or zero-shot categories.

Copy (the default), move or symbolic link. A plan first (:func:`plan_sort`, what ``--dry-run``
prints), then one journaled operation (:func:`apply_sort`): nothing is ever overwritten (a name
already taken gets a `` (1)`` suffix), a move on one file system is a rename, and the library
follows moved photos (same catalog row: vector and labels stay). :func:`undo` puts every photo
back and removes the copies, links and folders the operation made.
"""
from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from clipdesk.errors import ClipdeskError
from clipdesk.indexer.pipeline import CancelToken, Progress
from clipdesk.journal import Journal, UndoReport, sha256_file_quiet
from clipdesk.tags import Problem, folder_names, sidecar_names

KIND = "sort"
MODES = ("copy", "move", "link")
ProgressFn = Callable[[Progress], None]
_UNSAFE = {"", ".", ".."}


class OrganiseError(ClipdeskError):
    """A sort that cannot run: a destination that is read-only, a file, or inside the library."""


@dataclass(frozen=True)
class Placement:
    source: str
    dest: str
    category: str
    probability: float
    # XMP sidecars that go with the photo: (path, "ext" for photo.ext.xmp | "stem" for photo.xmp,
    # action). A photo.xmp that another file of the same name still uses is copied, not moved.
    sidecars: tuple[tuple[str, str, str], ...] = ()

    def as_dict(self) -> dict:
        return {"source": self.source, "dest": self.dest, "category": self.category,
                "probability": round(self.probability, 6), "sidecars": [s[0] for s in self.sidecars]}


@dataclass
class SortPlan:
    into: str
    mode: str
    placements: list[Placement] = field(default_factory=list)
    unsorted: int = 0  # no category, or under the minimum probability
    in_place: int = 0  # already in their category's folder
    problems: list[Problem] = field(default_factory=list)

    def as_dict(self) -> dict:
        counts: dict[str, int] = {}
        for p in self.placements:
            counts[p.category] = counts.get(p.category, 0) + 1
        return {"into": self.into, "mode": self.mode, "categories": counts,
                "placements": [p.as_dict() for p in self.placements], "unsorted": self.unsorted,
                "in_place": self.in_place, "problems": [p.as_dict() for p in self.problems]}


@dataclass
class SortReport:
    operation: str | None
    mode: str
    placed: list[Placement] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"operation": self.operation, "mode": self.mode, "placed": len(self.placed),
                "placements": [p.as_dict() for p in self.placed]}


def category_folder(category: str) -> str:
    """A category as a relative folder: ``a/b`` nests; names that would climb out are refused."""
    parts = [p.strip() for p in category.replace("\\", "/").split("/")]
    if any(p in _UNSAFE for p in parts) or any(not c.isprintable() for c in category) or len(category) > 400:
        raise OrganiseError(f"The category {category!r} cannot be a folder name.")
    return os.path.join(*parts)


def _check_destination(lib, into: str, mode: str) -> None:
    if mode not in MODES:
        raise OrganiseError(f"Unknown mode {mode!r} (use {', '.join(MODES)}).")
    if os.path.lexists(into) and not os.path.isdir(into):
        raise OrganiseError(f"{into} exists and is not a folder.")
    lib_folder = os.path.realpath(lib.folder)
    real = os.path.realpath(into)
    if real == lib_folder or real.startswith(lib_folder + os.sep):
        raise OrganiseError(f"{into} is inside the library folder {lib.folder}; choose a photo folder.")
    existing = into
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OrganiseError(f"Cannot sort into {into}: {existing} is read-only.")


def plan_sort(lib, rows: Iterable, into: str, mode: str = "copy", min_probability: float = 0.0) -> SortPlan:
    """Where each classified photo (``rows``: objects with path, label, probability) would go."""
    # canonical, like the library's folders, so moved photos keep paths a rescan agrees with
    into = os.path.realpath(os.path.abspath(os.path.expanduser(into)))
    _check_destination(lib, into, mode)
    plan = SortPlan(into, mode)
    taken: set[str] = set()
    for r in rows:
        if r.label is None or r.probability < min_probability:
            plan.unsorted += 1
            continue
        folder = os.path.join(into, category_folder(r.label))
        if os.path.dirname(r.path) == folder:
            plan.in_place += 1
            continue
        if not os.path.isfile(r.path):
            plan.problems.append(Problem(r.path, "the photo is missing; not sorted"))
            continue
        if mode == "move" and not os.access(os.path.dirname(r.path), os.W_OK):
            plan.problems.append(Problem(r.path, "its folder is read-only, so it cannot be moved; not sorted"))
            continue
        stem, ext = os.path.splitext(os.path.basename(r.path))
        sidecars = _sidecars(r.path, mode)
        styles = {style for _, style, _ in sidecars}
        dest, i = os.path.join(folder, stem + ext), 0
        # a free name for the photo and for the sidecars that will be named after it
        while dest in taken or os.path.lexists(dest) or any(
                os.path.lexists(_sidecar_path(dest, style)) for style in styles if style == "ext"):
            i += 1
            dest = os.path.join(folder, f"{stem} ({i}){ext}")
        taken.add(dest)
        plan.placements.append(Placement(r.path, dest, r.label, float(r.probability), sidecars))
    return plan


def _sidecars(photo: str, mode: str) -> tuple[tuple[str, str, str], ...]:
    """The XMP sidecars that travel with a copied or moved photo (links need none)."""
    if mode == "link":
        return ()
    out = []
    stem = os.path.splitext(os.path.basename(photo))[0].lower()
    for side in sidecar_names(photo):
        if os.path.basename(side).lower() == os.path.basename(photo).lower() + ".xmp":
            out.append((side, "ext", mode))
            continue
        names = folder_names(os.path.dirname(photo))
        # another file of the same name (a RAW twin) still uses photo.xmp: it stays, a copy goes
        shared = any(os.path.splitext(n)[0] == stem and not n.endswith(".xmp") and n != os.path.basename(photo).lower()
                     for n in names)
        out.append((side, "stem", "copy" if shared else mode))
    return tuple(out)


def classifications(lib, probe: str | None = None, classify: Sequence[str] | None = None,
                    threshold: float | None = None, progress: ProgressFn | None = None,
                    cancel: CancelToken | None = None) -> list:
    """Every photo's category from a probe or zero-shot ``classify`` names (none-classes dropped)."""
    from clipdesk.teaching import NONE_CLASS

    if bool(probe) == bool(classify):
        raise OrganiseError("Choose either a probe or zero-shot categories.")
    rows = (lib.predict(probe, progress=progress, cancel=cancel) if probe
            else lib.classify(list(classify), threshold, progress=progress, cancel=cancel))
    return [r for r in rows if r.label != NONE_CLASS]


def _sidecar_path(photo_dest: str, style: str) -> str:
    return (photo_dest if style == "ext" else os.path.splitext(photo_dest)[0]) + ".xmp"


def _follow(lib) -> Callable[[str, str], None]:
    """The catalog follows a moved photo: same row, so vector and labels stay."""
    def follow(src: str, dst: str) -> None:
        image_id = lib.catalog.id_for_path(src)
        if image_id is None:
            return  # not indexed (or failed to decode): the next rescan finds it at its new place
        st = os.stat(dst)
        stale = lib.catalog.id_for_path(dst)
        try:
            lib.catalog.write_batch(delete_ids=[stale] if stale is not None else [],
                                    moves=[(image_id, dst, st.st_size, st.st_mtime_ns, st.st_ino)])
        except sqlite3.IntegrityError:
            pass  # a failed-file row holds the name; the rescan reconciles it by content hash
    return follow


def apply_sort(lib, plan: SortPlan, progress: ProgressFn | None = None,
               cancel: CancelToken | None = None) -> SortReport:
    """Carry out a plan as one journaled operation (undo with :func:`undo`)."""
    report = SortReport(None, plan.mode)
    if not plan.placements:
        return report
    _check_destination(lib, plan.into, plan.mode)
    with lib.writing():
        added_folder = False
        if plan.mode == "move" and not any(_inside(plan.into, f) for f in lib.catalog.folders()):
            # Moved photos must stay inside the library's folders, or the next rescan drops them.
            lib.catalog.add_folder(plan.into)
            added_folder = True
        steps = []
        for p in plan.placements:
            n = len(steps)
            steps.append({"action": plan.mode, "path": p.dest, "source": p.source,
                          "info": {"category": p.category, "probability": p.probability}})
            steps += [{"action": action, "path": _sidecar_path(p.dest, style), "source": side,
                       "info": {"sidecar_of": n, "style": style}} for side, style, action in p.sidecars]
        with Journal(lib.folder).start(KIND, f"sort {plan.mode} into {plan.into}", steps,
                                       {"into": plan.into, "added_folder": added_folder}) as op:
            report.operation = op.id
            _run(lib, op, report, progress, cancel)
    return report


def _run(lib, op, report: SortReport, progress, cancel) -> None:
    follow = _follow(lib)
    pending = op.pending()
    for n, step in enumerate(pending):
        if cancel is not None:
            cancel.check()
        if not os.path.lexists(step.source or ""):
            op.skip(step)  # deleted or moved away since planning: nothing to sort
            continue
        owner = step.info.get("sidecar_of")
        if isinstance(owner, int) and 0 <= owner < len(op.steps):
            # A sidecar is named after where its photo really went (a collision renames it).
            step.path = _sidecar_path(op.steps[owner].target, str(step.info.get("style")))
            if os.path.lexists(step.path) and sha256_file_quiet(step.path) == sha256_file_quiet(step.source):
                op.skip(step)  # its twin already carried the same sidecar here
            else:
                op.place_file(step)
            continue
        dest = op.place_file(step, on_move=follow)
        report.placed.append(Placement(step.source, dest, str(step.info.get("category", "")),
                                       float(step.info.get("probability", 0.0))))
        if progress:
            progress(Progress("sort", n + 1, len(pending), path=dest))
    op.finish()


def resume(lib, progress: ProgressFn | None = None, cancel: CancelToken | None = None) -> SortReport:
    """Finish the newest interrupted sort: the half-done step is settled, the rest applied."""
    with lib.writing():
        op = Journal(lib.folder).interrupted(KIND)
        if op is None:
            raise OrganiseError("No interrupted sort to resume.")
        report = SortReport(op.id, op.steps[0].action if op.steps else "copy")
        with op:
            op.recover(on_move=_follow(lib))
            _run(lib, op, report, progress, cancel)
    return report


def undo(lib, operation: str | None = None) -> UndoReport:
    """Put every photo of the newest (or the given) sort back; remove its copies, links, folders."""
    with lib.writing():
        op = Journal(lib.folder).latest(KIND, operation)
        with op:
            follow = _follow(lib)
            op.recover(on_move=follow)  # a kill mid-step: settle it, so it is undone like the rest
            report = op.undo(on_move=follow)
        into = op.meta.get("into")
        if op.meta.get("added_folder") is True and isinstance(into, str) and not os.path.exists(into):
            try:
                lib.catalog.remove_folder(into)  # registered by this sort only; now empty and gone
            except ClipdeskError:
                pass
        return report


def _inside(path: str, folder: str) -> bool:
    folder = folder.rstrip(os.sep)
    return path == folder or path.startswith(folder + os.sep)
