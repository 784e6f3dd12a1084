"""The read-ahead / write-behind pipeline: order, batching, and failures from either side."""

import threading
from types import SimpleNamespace

import pytest

from sathmr.runtime.pipeline import Failed, Work, run_pipeline, stop_on_sigint
from sathmr.runtime.predictor import BatchOutput


class CountingPredictor:
    """Answers every item with its own payload, and records the batch sizes it was given."""

    def __init__(self):
        self.batches = []
        self.threads = set()

    def run_batch(self, items, names, timer=None):
        self.batches.append(len(items))
        self.threads.add(threading.current_thread().name)
        return BatchOutput([SimpleNamespace(name=n, value=it) for it, n in zip(items, names)], {}, {},
                           {"network": 0.001, "postprocess": 0.0})


def events(n=10, closed=None):
    try:
        for i in range(n):
            if i % 4 == 3:
                yield Failed(f"in{i}", "broken")
            yield Work(i, f"prepared{i}", f"name{i}")
    finally:
        if closed is not None:
            closed.set()


@pytest.mark.parametrize("threaded", [True, False])
def test_every_event_is_consumed_in_order_in_batches(threaded):
    pred, seen = CountingPredictor(), []
    stats = run_pipeline(events(), pred, lambda p, r: seen.append((p, None if r is None else r.value)), 3, threaded)
    expected = []
    for i in range(10):
        if i % 4 == 3:
            expected.append((Failed(f"in{i}", "broken"), None))
        expected.append((i, f"prepared{i}"))
    assert seen == expected
    # a marker flushes the pending batch, so nothing overtakes it: 0,1,2 | F | 3,4,5 | 6 | F | 7,8,9
    assert pred.batches == [3, 3, 1, 3]
    assert stats.images == 10 and stats.threaded == threaded
    assert pred.threads == {threading.main_thread().name}     # the network runs in the caller's thread


def test_a_writer_error_stops_the_run_and_keeps_its_traceback():
    closed = threading.Event()

    def consume(p, r):
        if p == 4:
            raise ValueError("disk full")

    with pytest.raises(ValueError, match="disk full") as info:
        run_pipeline(events(1000, closed), CountingPredictor(), consume, 1)
    assert any(f.name == "consume" for f in info.traceback)
    assert closed.wait(5), "the reader closed its event source"


def test_a_reader_error_reaches_the_caller():
    def broken():
        yield Work(0, "p", "n")
        raise RuntimeError("decoder bug")

    with pytest.raises(RuntimeError, match="decoder bug"):
        run_pipeline(broken(), CountingPredictor(), lambda p, r: None, 1)


def test_first_ctrl_c_only_sets_stop():
    import os
    import signal

    stop, said = threading.Event(), []
    with stop_on_sigint(stop, said.append):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.wait(5)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            threading.Event().wait(5)      # the second one interrupts at once
    assert said and "stopping" in said[0]
