"""The turn keys a replica expects its next reads of a conversation to derive.

``ListInteractions`` (its newest page) and ``GetConversation`` (its window of turns
checked for a gone key) run scripts that read turn keys they find in the conversation's
list, and a script reads no key its run did not declare (lua/read.lua's declare_first):
without a guess, the first run only names the turns and a second one reads them. So the
store keeps, per conversation, the turn keys its last read named (the page's, and the
window the next ``GetConversation`` will check, whose offset is drawn one call ahead), adds
each turn it writes itself, and declares them up front: one run when nothing else changed
the conversation. A guess is only a guess: the script still checks every key it reads is
declared, so a stale one (a turn written by another replica, an eviction) costs the
second run it saves, never a wrong answer nor an undeclared read. Extra declared keys (a
turn that left the page or was evicted) are read by nothing.

The keys are the full Redis key names, under the owner's tag: a guess for one owner's
conversation is never another owner's (the two legacy owners sharing a tag share the
guess, but each script checks the caller owns the conversation before reading any turn:
another owner's is NOT_FOUND, guessed or not).

It also keeps which conversations it last saw without turns (``known_empty``): such a
conversation has no list of turns, and a script declaring a key that does not exist is
refused by Redis for as long as a slot move lasts (TRYAGAIN), so their reads and updates
do not declare the list. A stale guess (another replica wrote a turn since) costs one
more run, the script asking for the list (lua/read.lua's declare_first).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

# Turn keys kept over all conversations (about 130 bytes each, so ~13 MB at most; the
# least recently read conversations are forgotten first): a cache, not a leak.
MAX_KEYS = 100_000
# The most turn keys kept as a page whose size was never asked (a conversation this
# replica started and has not listed yet): the largest page the service serves.
UNSIZED_PAGE = 100
# Conversations kept as known to have no turns (a key each, ~100 bytes: ~1 MB at most;
# the least recently seen forgotten first).
MAX_EMPTY = 10_000


@dataclass(slots=True)
class _Expected:
    # The newest page's turn keys, newest first, and the page_size it was read with
    # (0: not read yet).
    page: list[str] = field(default_factory=list)
    page_size: int = 0
    # Where the next GetConversation's window starts (None: not drawn yet) and its turn
    # keys (None: not known).
    offset: int | None = None
    window: list[str] | None = None

    def size(self) -> int:
        return len(self.page) + len(self.window or ())


class RecentTurns:
    """Per conversation (its hash's key), the turn keys to declare up front."""

    def __init__(self, window_turns: int, max_keys: int = MAX_KEYS) -> None:
        # A window guess grown past twice the window by this replica's own writes,
        # with no read in between to make it exact, is dropped rather than kept growing.
        self._window_cap = 2 * max(window_turns, 1)
        self._max_keys = max_keys
        self._kept = 0
        self._entries: OrderedDict[str, _Expected] = OrderedDict()
        self._empty: OrderedDict[str, None] = OrderedDict()

    def page(self, conv: str, size: int) -> list[str]:
        """The turn keys the newest page of ``size`` turns is expected to read."""
        entry = self._entries.get(conv)
        if entry is None:
            return []
        self._entries.move_to_end(conv)
        return entry.page[:size]

    def window(self, conv: str) -> tuple[int | None, list[str]]:
        """Where the next GetConversation's window starts (None: draw it now) and the
        turn keys it is expected to check."""
        entry = self._entries.get(conv)
        if entry is None:
            return None, []
        self._entries.move_to_end(conv)
        return entry.offset, list(entry.window or ())

    def learn_page(self, conv: str, turns: list[str], size: int) -> None:
        """The turn keys a read of the newest page of ``size`` turns read."""
        entry = self._entry(conv)
        self._kept += len(turns) - len(entry.page)
        entry.page, entry.page_size = turns, size
        self._trim()

    def learn_window(self, conv: str, offset: int, turns: list[str]) -> None:
        """Where the next GetConversation's window starts and its turn keys, as a read
        found them."""
        entry = self._entry(conv)
        self._kept += len(turns) - len(entry.window or ())
        entry.offset, entry.window = offset, turns
        self._trim()

    def known_empty(self, conv: str) -> bool:
        """Whether the conversation (its hash's key) had no turns when last seen."""
        return conv in self._empty

    def learn_count(self, conv: str, count: int) -> None:
        """The conversation's turn count as a call found it (0: a new conversation)."""
        if count:
            self._empty.pop(conv, None)
            return
        self._empty[conv] = None
        self._empty.move_to_end(conv)
        while len(self._empty) > MAX_EMPTY:
            self._empty.popitem(last=False)

    def wrote(self, conv: str, turn: str, *, new: bool) -> None:
        """A turn this replica wrote (``new``: the first of a conversation it started). It
        is the newest: first of the newest page (the oldest of the page's size drops out)
        and, turns being appended, in the next window (the whole list while it fits one,
        else one more turn that the window, wrapping, may reach)."""
        self._empty.pop(conv, None)
        entry = self._entries.get(conv)
        if entry is None:
            if not new:
                return  # nothing known of the other turns: the next read learns them
            entry = self._entry(conv)
            entry.window = []
        before = entry.size()
        limit = entry.page_size or UNSIZED_PAGE
        entry.page = [turn, *entry.page[: limit - 1]]
        if entry.window is not None:
            if len(entry.window) < self._window_cap:
                entry.window = [*entry.window, turn]
            else:
                entry.offset, entry.window = None, None
        self._kept += entry.size() - before
        self._trim()

    def forget(self, conv: str) -> None:
        """A conversation deleted: nothing to expect of it."""
        self._empty.pop(conv, None)
        entry = self._entries.pop(conv, None)
        if entry is not None:
            self._kept -= entry.size()

    def _entry(self, conv: str) -> _Expected:
        entry = self._entries.get(conv)
        if entry is None:
            entry = self._entries[conv] = _Expected()
        self._entries.move_to_end(conv)
        return entry

    def _trim(self) -> None:
        # The least recently used conversations go first; the one just used stays, even
        # alone past the bound (one window, at most twice GONE_CHECK_TURNS keys).
        while self._kept > self._max_keys and len(self._entries) > 1:
            _, entry = self._entries.popitem(last=False)
            self._kept -= entry.size()
