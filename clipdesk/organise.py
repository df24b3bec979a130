"""Sort photos into folders: each photo goes to ``DIR/<category>/`` by a probe or zero-shot categories.

Copy (the default), move or symbolic link. A plan first (:func:`plan_sort`, what ``--dry-run``
prints), then one journaled operation (:func:`apply_sort`): nothing is ever overwritten (a name
already taken gets a `` (1)`` suffix), a move on one file system is a rename, and the library
follows moved photos (same catalog row: vector and labels stay). A photo travels as a unit with
its RAW/JPEG twin and the XMP sidecars of both, renamed together. :func:`undo` puts every photo
back and removes the copies, links and folders the operation made.
"""
from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from clipdesk.errors import ClipdeskError
from clipdesk.indexer.pipeline import CancelToken, Progress
from clipdesk.indexer.formats import is_raw, twin_key
from clipdesk.journal import Journal, UndoReport
from clipdesk.tags import Problem, stem_sidecar_owners, sidecar_names, version_sidecars

KIND = "sort"
MODES = ("copy", "move", "link")
ProgressFn = Callable[[Progress], None]
_UNSAFE = {"", ".", ".."}


class OrganiseError(ClipdeskError):
    """A sort that cannot run: a destination that is read-only, a file, or inside the library."""


@dataclass(frozen=True)
class Placement:
    """One unit of a sort: a photo, its RAW/JPEG twin, and the XMP sidecars of both, which travel
    and are renamed together, so no photo ever ends up beside another photo's sidecar."""

    source: str
    dest: str
    category: str
    probability: float
    # (source, dest, action) of each sidecar: photo.ext.xmp, the photo.xmp it owns, darktable's
    # photo_NN.ext.xmp. A photo.xmp another file still uses is copied, not moved.
    sidecars: tuple[tuple[str, str, str], ...] = ()
    twins: tuple[tuple[str, str], ...] = ()  # (source, dest): the other half of a RAW+JPEG pair

    def as_dict(self) -> dict:
        return {"source": self.source, "dest": self.dest, "category": self.category,
                "probability": round(self.probability, 6),
                "twins": [{"source": s, "dest": d} for s, d in self.twins],
                "sidecars": [{"source": s, "dest": d} for s, d, _ in self.sidecars]}


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


def _units(rows: Iterable) -> list[list]:
    """Rows grouped into units: a RAW and its JPEG twin (same folder and stem) are one unit, RAW
    first; every other photo is a unit of its own."""
    rows = list(rows)
    kinds: dict[str, set[bool]] = {}
    for r in rows:
        key = twin_key(r.path)
        if key is not None:
            kinds.setdefault(key, set()).add(is_raw(r.path))
    units: dict[str, list] = {}
    for r in rows:
        key = twin_key(r.path)
        units.setdefault(key if key is not None and kinds[key] == {True, False} else r.path, []).append(r)
    return [sorted(u, key=lambda r: (not is_raw(r.path), r.path)) for u in units.values()]


def plan_sort(lib, rows: Iterable, into: str, mode: str = "copy", min_probability: float = 0.0) -> SortPlan:
    """Where each classified photo (``rows``: objects with path, label, probability) would go.

    A RAW+JPEG pair is classified once (by its surer member) and goes to one folder; a photo,
    its twin and their sidecars are renamed together when a name is taken."""
    # canonical, like the library's folders, so moved photos keep paths a rescan agrees with
    into = os.path.realpath(os.path.abspath(os.path.expanduser(into)))
    _check_destination(lib, into, mode)
    plan = SortPlan(into, mode)
    taken: set[str] = set()
    for unit in _units(rows):
        lead = unit[0]
        sure = max((r for r in unit if r.label is not None), key=lambda r: r.probability, default=None)
        if sure is None or sure.probability < min_probability:
            plan.unsorted += len(unit)
            continue
        folder = os.path.join(into, category_folder(sure.label))
        if os.path.dirname(lead.path) == folder:
            plan.in_place += len(unit)
            continue
        missing = [r.path for r in unit if not os.path.isfile(r.path)]
        if missing:
            plan.problems += [Problem(m, "the photo is missing; not sorted") for m in missing]
            continue
        if mode == "move" and not os.access(os.path.dirname(lead.path), os.W_OK):
            plan.problems.append(Problem(lead.path, "its folder is read-only, so it cannot be moved; not sorted"))
            continue
        stem, ext = os.path.splitext(os.path.basename(lead.path))
        sidecars = _sidecars([r.path for r in unit], mode)
        names = [os.path.basename(p) for p in [r.path for r in unit] + [side for side, _ in sidecars]]
        i = 0
        while True:  # a free stem for every file of the unit
            dests = [os.path.join(folder, _renamed(n, stem, i)) for n in names]
            if not any(d in taken or os.path.lexists(d) for d in dests):
                break
            i += 1
        taken.update(dests)
        n_photos = len(unit)
        plan.placements.append(Placement(
            lead.path, dests[0], sure.label, float(sure.probability),
            tuple((side, d, action) for (side, action), d in zip(sidecars, dests[n_photos:])),
            tuple((r.path, d) for r, d in zip(unit[1:], dests[1:n_photos]))))
    return plan


def _renamed(name: str, stem: str, i: int) -> str:
    """``name`` (which starts with the unit's ``stem``) under the unit's ``i``-th free stem."""
    return name if i == 0 else f"{stem} ({i}){name[len(stem):]}"


def _sidecars(photos: list[str], mode: str) -> list[tuple[str, str]]:
    """The XMP sidecars (path, action) that travel with a unit of photos, each once."""
    out: dict[str, str] = {}
    for photo in photos:
        folder, name = os.path.split(photo)
        stem = os.path.splitext(name)[0]
        for side in sidecar_names(photo) + version_sidecars(photo):
            if side in out:
                continue
            action = mode
            if mode == "move" and os.path.basename(side).lower() == stem.lower() + ".xmp":
                # another file of that name outside the unit (two JPEG-like twins) still uses it
                users = {n.lower() for n in stem_sidecar_owners(folder, stem)}
                if users - {os.path.basename(p).lower() for p in photos}:
                    action = "copy"
            out[side] = action
    return list(out.items())


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
    """Where a sidecar of a journal from before units (``sidecar_of``) goes: after its photo."""
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
            lead_ext = os.path.splitext(p.dest)[1]
            steps.append({"action": plan.mode, "path": p.dest, "source": p.source,
                          "info": {"category": p.category, "probability": p.probability}})
            steps += [{"action": plan.mode, "path": dest, "source": src,
                       "info": {"unit_of": n, "kind": "twin", "rest": _rest(dest, p.dest, lead_ext)}}
                      for src, dest in p.twins]
            steps += [{"action": action, "path": dest, "source": src,
                       "info": {"unit_of": n, "kind": "sidecar", "rest": _rest(dest, p.dest, lead_ext)}}
                      for src, dest, action in p.sidecars]
        with Journal(lib.folder).start(KIND, f"sort {plan.mode} into {plan.into}", steps,
                                       {"into": plan.into, "added_folder": added_folder}) as op:
            report.operation = op.id
            _run(lib, op, report, progress, cancel)
    return report


def _rest(dest: str, lead_dest: str, lead_ext: str) -> str:
    """What follows the unit's stem in a companion's name (``.JPG``, ``.CR2.xmp``, ``_01.CR2.xmp``)."""
    stem = os.path.basename(lead_dest)[:len(os.path.basename(lead_dest)) - len(lead_ext)]
    return os.path.basename(dest)[len(stem):]


def _companion_path(op, step) -> str | None:
    """Where a twin or sidecar goes: named after where its unit's photo really went (a name taken
    since planning gives the photo another one). None for a step that is a unit's photo."""
    owner = step.info.get("unit_of", step.info.get("sidecar_of"))
    if not (isinstance(owner, int) and 0 <= owner < len(op.steps)):
        return None
    lead = op.steps[owner]
    if "sidecar_of" in step.info:  # a journal written before units
        return _sidecar_path(lead.target, str(step.info.get("style")))
    if lead.target == lead.path:
        return step.path
    stem = os.path.splitext(os.path.basename(lead.target))[0]
    return os.path.join(os.path.dirname(lead.target), stem + str(step.info.get("rest", "")))


def _run(lib, op, report: SortReport, progress, cancel) -> None:
    follow = _follow(lib)
    pending = op.pending()
    leads = []  # (the step of a unit's photo, where it went)
    units: dict[int, tuple[list, list]] = {}  # unit's photo step -> (twins, sidecars) where they went
    for n, step in enumerate(pending):
        if cancel is not None:
            cancel.check()
        if not os.path.lexists(step.source or ""):
            op.skip(step)  # deleted or moved away since planning: nothing to sort
            continue
        where = _companion_path(op, step)
        if where is not None:
            step.path = where
            dest = op.place_file(step, on_move=follow if step.info.get("kind") == "twin" else None)
            twins, sidecars = units.setdefault(step.info.get("unit_of", step.info.get("sidecar_of")), ([], []))
            (twins if step.info.get("kind") == "twin" else sidecars).append((step.source, dest, step.action))
            continue
        dest = op.place_file(step, on_move=follow)
        leads.append((step, dest))
        if progress:
            progress(Progress("sort", n + 1, len(pending), path=dest))
    for step, dest in leads:
        twins, sidecars = units.get(step.n, ([], []))
        report.placed.append(Placement(step.source, dest, str(step.info.get("category", "")),
                                       float(step.info.get("probability", 0.0)), tuple(sidecars),
                                       tuple((s, d) for s, d, _ in twins)))
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
