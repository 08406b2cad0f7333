"""What the store expects its next reads of a conversation to derive
(services/memory/recent_turns.py): the newest page and window as last read, this
replica's own turns added, and a bounded cache."""

from __future__ import annotations

from services.memory.recent_turns import MAX_EMPTY, RecentTurns


def test_own_turns_join_the_page_and_the_window() -> None:
    recent = RecentTurns(window_turns=4)
    recent.learn_page("c", ["t3", "t2", "t1"], 3)
    recent.learn_window("c", 1, ["t1", "t2", "t3"])
    recent.wrote("c", "t4", new=False)
    assert recent.page("c", 3) == ["t4", "t3", "t2"]  # t1 left a page of 3
    assert recent.page("c", 2) == ["t4", "t3"]
    assert recent.window("c") == (1, ["t1", "t2", "t3", "t4"])


def test_a_started_conversation_is_expected_whole_and_an_unread_one_not_at_all() -> None:
    recent = RecentTurns(window_turns=4)
    recent.wrote("new", "t0", new=True)
    assert recent.page("new", 11) == ["t0"]
    assert recent.window("new") == (None, ["t0"])  # its offset is drawn by the read
    recent.wrote("unread", "t9", new=False)  # its other turns are unknown: nothing kept
    assert recent.page("unread", 11) == []
    assert recent.window("unread") == (None, [])


def test_a_window_grown_past_twice_its_size_by_writes_alone_is_dropped() -> None:
    recent = RecentTurns(window_turns=2)
    recent.learn_window("c", 0, ["a", "b"])
    recent.wrote("c", "c", new=False)
    recent.wrote("c", "d", new=False)
    assert recent.window("c") == (0, ["a", "b", "c", "d"])
    recent.wrote("c", "e", new=False)
    assert recent.window("c") == (None, [])


def test_the_cache_keeps_at_most_its_keys_forgetting_the_least_recently_read() -> None:
    recent = RecentTurns(window_turns=4, max_keys=10)
    for n in range(6):
        recent.learn_page(f"c{n}", [f"c{n}-1", f"c{n}-0"], 2)
        recent.page("c0", 2)  # read again: kept
    kept = [n for n in range(6) if recent.page(f"c{n}", 2)]
    assert kept == [0, 2, 3, 4, 5]
    recent.forget("c0")
    recent.learn_window("big", 0, [f"b{n}" for n in range(9)])
    assert [n for n in range(6) if recent.page(f"c{n}", 2)] == []  # the one used stays
    assert recent.window("big") == (0, [f"b{n}" for n in range(9)])


def test_a_conversation_seen_without_turns_is_known_so_until_a_turn_or_a_count() -> None:
    recent = RecentTurns(window_turns=4)
    assert not recent.known_empty("c")  # never seen: taken to have turns
    recent.learn_count("c", 0)
    assert recent.known_empty("c")
    recent.wrote("c", "t0", new=False)  # a turn of this replica
    assert not recent.known_empty("c")
    recent.learn_count("c", 0)
    recent.learn_count("c", 3)  # another replica's turns, found by a read
    assert not recent.known_empty("c")
    recent.learn_count("c", 0)
    recent.forget("c")  # deleted
    assert not recent.known_empty("c")


def test_the_conversations_known_without_turns_are_bounded() -> None:
    recent = RecentTurns(window_turns=4)
    for n in range(MAX_EMPTY + 1):
        recent.learn_count(f"c{n}", 0)
    assert not recent.known_empty("c0")  # the least recently seen forgotten
    assert recent.known_empty("c1") and recent.known_empty(f"c{MAX_EMPTY}")
