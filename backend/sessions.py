"""Interactive sessions: the objects an annotator is clicking on, remembered across predict requests.

What Label Studio 1.23's editor sends (web/apps/labelstudio/src/pages/DataManager/DataManager.jsx, its
`lsf:regionFinishedDrawing` handler, and web/libs/editor/src/mixins/Regions.js,
`getConnectedDynamicRegions`): after each smart keypoint (or rectangle) it sends, as `context.result`, every
smart region of that type and label the annotation holds, each with its region `id`. Accepting or
rejecting the suggestion deletes those keypoints (web/libs/editor/src/stores/Annotation/Annotation.js, `acceptAllSuggestions`
-> `deleteAllDynamicregions`), so the next click comes alone, with nothing that says which object it is
for; Auto-Accept does that after every answer. Nothing about accepted regions or the selection is sent.
Accepting replaces a region of the annotation only when the suggestion carries that region's id
(`acceptSuggestion`), so each object here has a region id of its own that every answer for it carries.

A request is for one object: Label Studio sends all the smart keypoints of a label until they are
accepted, and they are for the object being worked on. Which one:
- the object that has seen one of the request's keypoint ids (or, from clients that send no ids, one of its
  clicks): those it sent before and no longer sends, the annotator deleted; a new click refines it;
- for a request with only new clicks (the first click of an object, or one after accepting): the object
  whose mask the first click falls on or next to (refining after accepting); for a negative click
  elsewhere, the object worked on last (a negative click alone starts nothing);
- else a new object. A rectangle is an object of its own, with the clicks sent with it.

Where the annotator starts from a region one of the backend's predictions made (pre-annotation, Retrieve
predictions, refine or auto mode; predicted_regions.py keeps them, since Label Studio does not send them), a
click on or next to it, with no object of the annotator's there, starts from that region: its mask is the
result refined, its region id the answer's, so accepting replaces it.

Who is clicking, and what was deleted: Label Studio 1.23 sends neither the user nor the annotation's regions
with the request; its server adds the task's `drafts` of the requesting user only (label_studio/ml/mixins.py,
InteractiveMixin; label_studio/ml/models.py, interactive_annotating), each with its `user` and `result`, the
annotation as the editor last autosaved it (at most 5 s after a change: web/libs/editor/src/stores/Annotation/
Annotation.js, autosaveDelay). So an object belongs to the user of the drafts sent with its requests; one made
before the annotator's first draft belongs to nobody yet and is claimed by the first request that carries a
draft. A request with drafts sees its user's objects and nobody's; one without sees nobody's only. An object
whose region id a draft has held (it was accepted) and the drafts now sent no longer hold was deleted (or
undone): it is forgotten, and the next click there starts afresh. Deleting it gives no request, so a click
before the next autosave still refines it.

Each object keeps its last mask (and the tool's state), which on a large image is tens of megabytes: the
objects live within a byte budget, the least recently used evicted first, and end after a time unused.

Requests come concurrently (a click sent before the last answer came back, a request sent twice): finding
the object and claiming it are one step, and the object stays the request's until its result is
remembered. A request that is for an object under way, or may be (its clicks are known to no object at
rest, so an object's coming mask decides where they go), waits for that object's result and then builds
on it; requests for other objects, tasks and labels run side by side.
"""
from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from itertools import count

import numpy as np
from cachetools import TLRUCache

from model.core.clicks import Click
from model.tools import ToolResult

Group = tuple[str, int | None, str, str]  # project, task, brush tag, label: the objects a request may be for
Key = tuple[str, int | None, str, str, str | None, str]  # the group, the object's annotator and region id
Box = tuple[float, float, float, float]
Identity = str | Click | Box


@dataclass(frozen=True)
class Placed:
    """A click, and the id of the keypoint region Label Studio placed it as (None from clients that send none)."""

    click: Click
    id: str | None = None

    @property
    def identity(self) -> Identity:
        return self.id if self.id is not None else self.click


@dataclass(frozen=True)
class PlacedBox:
    box: Box
    id: str | None = None

    @property
    def identity(self) -> Identity:
        return self.id if self.id is not None else self.box


@dataclass(frozen=True)
class Annotator:
    """Who sends a request, as far as Label Studio says: the user of the drafts it sends (None: no draft yet),
    and the region ids those drafts hold (None when none was sent)."""

    user: str | None = None
    drafted: frozenset[str] | None = None

    @classmethod
    def from_drafts(cls, drafts: object) -> Annotator:
        """From a task's `drafts` as Label Studio 1.23 sends them; anything else says nothing."""
        if not isinstance(drafts, list):
            return cls()
        drafts = [draft for draft in drafts if isinstance(draft, dict)]
        users = sorted({str(draft["user"]) for draft in drafts if draft.get("user") not in (None, "")})
        ids = frozenset(str(result["id"]) for draft in drafts if isinstance(draft.get("result"), list)
                        for result in draft["result"] if isinstance(result, dict) and result.get("id") is not None)
        return cls(users[0] if users else None, ids if drafts else None)

    def sees(self, owner: str | None) -> bool:
        return owner is None or owner == self.user


UNKNOWN = Annotator()  # a request that says nothing of who sends it


@dataclass
class Session:
    """One object: the region id its answers carry, the clicks (and box) placed on it, the tool's last result."""

    region_id: str
    clicks: list[Placed] = field(default_factory=list)
    box: PlacedBox | None = None
    result: ToolResult | None = None
    area: int = 0  # of the result's mask
    live: frozenset[Identity] = frozenset()  # what Label Studio sent of it last
    used: int = 0  # when it was last remembered (a count of requests)
    owner: str | None = None  # the annotator's user, None until a request with a draft says
    drafted: bool = False  # a draft has held its region: it was accepted

    @property
    def key_part(self) -> tuple[str | None, str]:
        return self.owner, self.region_id

    @property
    def nbytes(self) -> int:
        held = 256 + 48 * len(self.clicks)
        if self.result is not None:
            held += self.result.mask.nbytes
            state = self.result.state
            held += state.nbytes if isinstance(state, np.ndarray) else 0
        return held

    def knows(self, placed: Placed | PlacedBox) -> bool:
        if isinstance(placed, PlacedBox):
            return self.box is not None and self.box.identity == placed.identity
        return any(p.identity == placed.identity for p in self.clicks)

    def near(self, click: Click, share: float) -> bool:
        """Whether the click falls on the object's mask, or next to it within `share` of the object's size."""
        if self.result is None or not self.area:
            return False
        reach = max(3, int(share * np.sqrt(self.area)))
        row, col = click.pixel
        return bool(self.result.mask[max(row - reach, 0):row + reach + 1, max(col - reach, 0):col + reach + 1].any())


@dataclass
class Step:
    """What one request asks of one object: its clicks and box now, and what the tool is to do."""

    session: Session  # as it is after this request, its result still the last one
    previous: ToolResult | None  # the result to refine; None: start afresh from the clicks and box
    run: bool  # False: nothing changed, the last result stands

    @property
    def clicks(self) -> list[Click]:
        return [placed.click for placed in self.session.clicks]

    @property
    def box(self) -> Box | None:
        return self.session.box.box if self.session.box else None


class Sessions:
    # How close to an object's mask a new click counts as refining it, as a share of the object's size
    # (the square root of its area): a positive click there most likely adds a part the mask missed.
    NEAR = 0.15

    def __init__(self, ttl: float, max_bytes: int):
        self.ttl = ttl
        self._items: TLRUCache[Key, Session] = TLRUCache(
            maxsize=max(max_bytes, 1), ttu=lambda _key, _session, now: now + ttl,
            getsizeof=lambda session: session.nbytes)
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)  # notified whenever an object under way is let go
        self._under_way: dict[Key, Session] = {}  # objects claimed by a request, as that request left them
        self._clock = count(1)
        self.hits = 0  # requests that continued an object
        self.misses = 0

    @property
    def size_bytes(self) -> int:
        with self._lock:
            return int(self._items.currsize)

    def __len__(self) -> int:
        with self._lock:
            self._items.expire()
            return len(self._items)

    def resolve(self, group: Group, clicks: list[Placed], box: PlacedBox | None = None,
                annotator: Annotator = UNKNOWN, predicted: Callable[[], Sequence[Session]] = tuple) -> Step:
        """The object the request's clicks and box are for (see the module's docstring), and what to do;
        `predicted` reads the regions of the backend's predictions a first click may start from (only for
        a click no object knows or is near: refining an object costs no read). The object is
        claimed for this request until remember() or release(); a request that depends on an object under
        way waits for it first."""
        with self._settled:
            while True:
                busy = [session for key, session in self._under_way.items()
                        if key[:4] == group and annotator.sees(key[4])]
                resting = self._resting(group, annotator)
                known = _known(busy + resting, clicks, box)
                waits_for_busy = any(known is session for session in busy) if known else bool(busy and box is None)
                if not waits_for_busy:
                    break
                self._settled.wait()
            taken = {session.region_id for session in busy + resting}
            first_alone = known is None and box is None and bool(clicks) and not any(
                session.near(clicks[0].click, self.NEAR) for session in resting)
            starts = [start for start in (predicted() if first_alone else ()) if start.region_id not in taken and (
                annotator.drafted is None or start.region_id in annotator.drafted)]
            session = _owner(resting, starts, clicks, box, self.NEAR)
            self.hits += session is not None
            self.misses += session is None
            session = replace(session, owner=annotator.user or session.owner) if session else \
                Session(uuid.uuid4().hex[:10], owner=annotator.user)
            step = _step(session, clicks, box)
            self._under_way[(*group, *step.session.key_part)] = step.session
            return step

    def remember(self, group: Group, session: Session, result: ToolResult) -> Session:
        """Keep the object's result, and let it go: the object as kept."""
        kept = replace(session, result=result, area=int(result.mask.sum()), used=next(self._clock))
        key = (*group, *session.key_part)
        with self._settled:
            self._items.pop(key, None)
            if session.owner is not None:
                self._items.pop((*group, None, session.region_id), None)  # nobody's until this request claimed it
            if kept.nbytes <= self._items.maxsize:  # an object larger than the whole budget is not kept
                self._items[key] = kept
            self._under_way.pop(key, None)
            self._settled.notify_all()
        return kept

    def release(self, group: Group, session: Session) -> None:
        """Let the object go as it was before the request (nothing when its result was remembered)."""
        with self._settled:
            if self._under_way.pop((*group, *session.key_part), None) is not None:
                self._settled.notify_all()

    def _resting(self, group: Group, annotator: Annotator) -> list[Session]:
        """The group's objects the annotator may continue and no request is working on, the most recently used
        first; those the annotator's drafts say were deleted are forgotten (the lock held)."""
        found = []
        for key in list(self._items):
            session = self._items.get(key)
            if session is None or key[:4] != group or key in self._under_way or not annotator.sees(key[4]):
                continue
            if annotator.drafted is not None and session.region_id in annotator.drafted:
                session.drafted = True
            elif annotator.drafted is not None and session.drafted:
                del self._items[key]  # accepted once, and no longer in the annotation: deleted
                continue
            found.append(session)
        return sorted(found, key=lambda session: session.used, reverse=True)


def _known(objects: list[Session], clicks: list[Placed], box: PlacedBox | None) -> Session | None:
    """The object that has seen the request's box, or (without a box) one of its clicks, the first click first."""
    if box is not None:
        return next((session for session in objects if session.knows(box)), None)
    return next((session for placed in clicks for session in objects if session.knows(placed)), None)


def _owner(objects: list[Session], starts: list[Session], clicks: list[Placed], box: PlacedBox | None,
           share: float) -> Session | None:
    """The object a request is for, None for a new one; `starts` (predicted regions) only for a first click on
    or next to one. A request is about one object: Label Studio sends all the smart keypoints of a label
    until they are accepted, and they are for the object being worked on."""
    known = _known(objects, clicks, box)
    if known is not None or box is not None or not clicks:
        return known
    first = clicks[0].click
    near = next((session for session in objects + starts if session.near(first, share)), None)
    if near is None and not first.positive:
        return next(iter(objects), None)  # a negative click alone starts nothing: it corrects the last object
    return near


def _step(session: Session, sent: list[Placed], box: PlacedBox | None) -> Step:
    """The object after this request: the clicks it keeps, those added, and whether to refine or start afresh."""
    by_identity = {placed.identity: placed for placed in sent}
    if any(session.knows(placed) for placed in sent):
        # Label Studio sent it again: what it sent of it before and not now, the annotator deleted; a
        # keypoint sent again may have been moved
        kept = [by_identity.get(p.identity, p) for p in session.clicks
                if p.identity in by_identity or p.identity not in session.live]
    else:
        kept = list(session.clicks)  # settled: accepted (Label Studio deleted the keypoints) or from before
    added = [placed for placed in sent if not session.knows(placed)]
    its_box = box or session.box
    changed = kept != session.clicks or its_box != session.box
    updated = replace(session, clicks=kept + added, box=its_box, live=frozenset(by_identity))
    return Step(updated, None if changed else session.result, changed or bool(added) or session.result is None)
