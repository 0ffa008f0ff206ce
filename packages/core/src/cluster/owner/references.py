"""The reference table: who holds each object this process knows, and when one may go.

Distributed reference counting (docs/design/0004) from one process's side:

- **local** refs: ``ObjectRef``s alive in this process, counted by object;
- **escaped** objects: pickled somewhere we cannot follow (``cloudpickle.dumps`` by a user):
  never freed while we live;
- **borrowers** (owner side): other processes that hold refs to objects we own, with how many
  registrations each made;
- **borrowed** (borrower side): objects owned elsewhere that we hold, with how many times we
  registered with their owner.

Plain bookkeeping under one lock, no I/O: the runtime asks and acts on the answers (frees an
object, tells an owner a borrow ended, registers a borrow). Which objects the process *owns*
is the runtime's (it changes with submissions and results); methods that need it take it.

Imports: nothing of ours at run time.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Container, Iterable, Sequence
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from cluster.objects.refs import ObjectRef


@attrs.define
class Borrow:
    """An object owned elsewhere that this process holds."""

    owner: str
    registered: int = 0  # registrations the owner counted for us (each is undone once)


@attrs.frozen
class Release:
    """What dropping the last local ref asks of the runtime."""

    free: bool = False  # an object we own that nobody holds any more: free it
    borrow: Borrow | None = None  # a borrowed object: tell its owner (if we registered)


KEEP = Release()
FREE = Release(free=True)


@attrs.define(eq=False)
class ReferenceTable:
    lock: threading.Lock = attrs.Factory(threading.Lock)
    local: collections.Counter[bytes] = attrs.Factory(collections.Counter)
    escaped: set[bytes] = attrs.Factory(set)
    borrowers: dict[bytes, collections.Counter[str]] = attrs.Factory(dict)
    borrowed: dict[bytes, Borrow] = attrs.Factory(dict)

    # -- local refs ------------------------------------------------------------------------

    def add_local(self, object_id: bytes) -> None:
        with self.lock:
            self.local[object_id] += 1

    def remove_local(self, object_id: bytes, owned: Container[bytes]) -> Release:
        """One local ref fewer. With it gone, an owned object nobody else holds is to be
        freed, and a borrowed one released; anything else is kept."""
        with self.lock:
            count = self.local[object_id] - 1
            if count > 0:
                self.local[object_id] = count
                return KEEP
            del self.local[object_id]
            if object_id in self.escaped:
                return KEEP
            if object_id not in owned:
                return Release(borrow=self.borrowed.pop(object_id, None))
            if object_id in self.borrowers:
                return KEEP  # other processes still hold it
            return FREE

    def escape(self, object_id: bytes) -> None:
        self.escaped.add(object_id)

    def held(self, object_id: bytes) -> bool:
        """Whether anything still holds the object: a local ref, an escape, a borrower."""
        return object_id in self.local or object_id in self.escaped or object_id in self.borrowers

    # -- owner side: our objects held elsewhere ---------------------------------------------

    def add_borrowers(self, object_ids: Sequence[bytes], borrower: str, owned: Container[bytes]) -> list[bool]:
        """``borrower`` holds refs to these objects: count it for each we own (True), and
        answer False for the ones we no longer own (freed already)."""
        known = []
        with self.lock:
            for object_id in object_ids:
                if object_id in owned:
                    counts = self.borrowers.get(object_id)
                    if counts is None:
                        counts = self.borrowers[object_id] = collections.Counter()
                    counts[borrower] += 1
                    known.append(True)
                else:
                    known.append(False)
        return known

    def remove_borrowers(self, object_ids: Sequence[bytes], borrower: str, counts: Sequence[int]) -> list[bytes]:
        """``borrower`` let go of ``counts`` registrations of each object: the objects that
        nothing holds any more (to free)."""
        to_free = []
        with self.lock:
            for object_id, n in zip(object_ids, counts, strict=False):
                held = self.borrowers.get(object_id)
                if held is None:
                    continue
                left = held[borrower] - n
                if left > 0:
                    held[borrower] = left
                else:
                    del held[borrower]
                if not held:
                    del self.borrowers[object_id]
                    if object_id not in self.local and object_id not in self.escaped:
                        to_free.append(object_id)
        return to_free

    def forget_borrower(self, address: str) -> list[bytes]:
        """The borrower at ``address`` is gone: drop all it held; the objects to free."""
        to_free = []
        with self.lock:
            for object_id, counts in list(self.borrowers.items()):
                if counts.pop(address, None) is not None and not counts:
                    del self.borrowers[object_id]
                    if object_id not in self.local and object_id not in self.escaped:
                        to_free.append(object_id)
        return to_free

    def borrower_addresses(self) -> set[str]:
        with self.lock:
            return {address for counts in self.borrowers.values() for address in counts}

    def take_back(self, object_id: bytes, borrower: str) -> None:
        """A ref to our own object came back to us (inside a task's result) and replaces one
        registration ``borrower`` made for it."""
        with self.lock:
            counts = self.borrowers.get(object_id)
            if counts is not None and counts[borrower] > 0:
                counts[borrower] -= 1
                if counts[borrower] == 0:
                    del counts[borrower]
                if not counts:
                    del self.borrowers[object_id]

    # -- borrower side: objects owned elsewhere that we hold --------------------------------

    def to_register(self, refs: Iterable[ObjectRef]) -> dict[str, list[bytes]]:
        """Refs just unpickled here: the objects to register with their owners (by owner);
        those registered already cost nothing."""
        by_owner: dict[str, dict[bytes, None]] = {}
        with self.lock:
            for ref in refs:
                record = self.borrowed.get(ref._id)
                if record is None:
                    record = self.borrowed[ref._id] = Borrow(ref._owner)
                if record.registered == 0:
                    by_owner.setdefault(ref._owner, {})[ref._id] = None
        return {owner: list(ids) for owner, ids in by_owner.items()}

    def registered(self, object_ids: Sequence[bytes], known: Sequence[bool]) -> list[bytes]:
        """The owner counted us for the objects it still ``known``: note it. The objects we
        dropped meanwhile (to unregister again)."""
        late = []
        with self.lock:
            for object_id, ok in zip(object_ids, known, strict=False):
                if not ok:
                    continue
                record = self.borrowed.get(object_id)
                if record is None:
                    late.append(object_id)
                else:
                    record.registered += 1
        return late

    def adopt(self, object_id: bytes, owner: str) -> None:
        """A ref to someone else's object came to us inside a task's result, its owner told
        already (the worker registered us): count that registration."""
        with self.lock:
            record = self.borrowed.get(object_id)
            if record is None:
                record = self.borrowed[object_id] = Borrow(owner)
            record.registered += 1
