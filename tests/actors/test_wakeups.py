"""The simple base's wakeup list, scanned by ``fast_wakeups``: the same wakeups due, in the
same order, as thespian's own scan (``ExpirationTimer.view(now).expired()``)."""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st
from thespian.system.simpleSystemBase import WakeupManager
from thespian.system.timing import currentTime

from actors.system import fast_wakeups

steps = st.lists(st.one_of(
    st.tuples(st.just("add"), st.floats(min_value=0.0, max_value=10.0)),
    st.tuples(st.just("pop"), st.floats(min_value=-1.0, max_value=12.0)),
), max_size=40)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_due_wakeups_and_the_next_one_are_thespians(sequence: list[tuple[str, float]]) -> None:
    fast_wakeups()
    manager = WakeupManager()
    start = currentTime()
    for number, (kind, seconds) in enumerate(sequence):
        if kind == "add":
            manager._add_wakeup(f"actor-{number}", timedelta(seconds=seconds), number)
            continue
        now = start + seconds
        pending = list(manager._wakeUps)
        expected_due = [wakeup for wakeup in pending if wakeup[1].view(now).expired()]
        assert manager._pop_expired_wakeups(now) == expected_due
        assert manager._wakeUps == [wakeup for wakeup in pending if wakeup not in expected_due]
        following = manager._next_wakeup()
        if manager._wakeUps:
            assert following._time_to_quit == min(timer._time_to_quit for _, timer, _ in manager._wakeUps)
        else:
            assert following is None
