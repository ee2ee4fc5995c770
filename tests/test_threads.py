"""CPU threads on a shared machine: the ThreadWatch follows the load between steps
(--adapt_threads) or warns once, and the training loops consult it at every batch."""

import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn

from darts.final import FinalConfig
from darts.search import SearchConfig
from darts.train import engine
from darts.train.cli import parse_args
from darts.train.config import from_arguments
from darts.train.engine import ThreadWatch, train_one_epoch


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    watch = engine._thread_watch
    yield
    torch.set_num_threads(threads)
    engine._thread_watch = watch


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def scripted(values):
    """others(): the given loads in order, counting the calls."""
    calls = []

    def others():
        calls.append(1)
        return values[len(calls) - 1]
    return others, calls


def test_adapting_watch_takes_the_free_cpus_within_its_bounds(restore_threads):
    others, calls = scripted([2, 0, 1, 5, 0])
    clock, notes = Clock(), []
    torch.set_num_threads(3)
    watch = ThreadWatch(3, 4, adapt=True, note=notes.append, interval_s=10.0, others=others,
                        clock=clock)
    for load, want in zip([2, 0, 1, 5, 0], [2, 3, 3, 1, 3], strict=True):
        watch()
        assert torch.get_num_threads() == want, (load, want)
        clock.now += 10.0
    # at most --threads (3) when the machine is free; at least 1 when it is full
    assert len(calls) == 5
    assert len(notes) == 4  # 3->2, 2->3, (3 stays), 3->1, 1->3
    assert notes[0] == "CPU threads 3 -> 2: 2 other process(es) running on 4 CPUs"


def test_watch_looks_at_the_load_once_per_interval(restore_threads):
    others, calls = scripted([0] * 10)
    clock = Clock()
    watch = ThreadWatch(2, 2, adapt=True, interval_s=10.0, others=others, clock=clock)
    for t in (0.0, 1.0, 9.9, 10.0, 15.0, 19.99, 20.0):
        clock.now = t
        watch()
    assert len(calls) == 3  # at 0, 10 and 20


def test_fixed_watch_warns_once_and_leaves_the_threads(restore_threads):
    others, _ = scripted([0, 1, 3, 3])
    clock, warnings = Clock(), []
    torch.set_num_threads(2)
    watch = ThreadWatch(2, 2, adapt=False, warn=warnings.append, interval_s=1.0, others=others,
                        clock=clock)
    for _ in range(4):
        watch()
        clock.now += 1.0
    assert torch.get_num_threads() == 2
    assert len(warnings) == 1
    assert "1 other process(es)" in warnings[0] and "--adapt_threads" in warnings[0]


def test_a_single_thread_is_never_warned_about(restore_threads):
    others, _ = scripted([5])
    warnings = []
    torch.set_num_threads(1)
    ThreadWatch(1, 2, warn=warnings.append, others=others)()
    assert warnings == []


def test_a_busy_process_is_counted_and_an_idle_machine_leaves_this_process_out():
    assert engine._own_running_threads() >= 1  # the thread that asks is running
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        assert engine._other_running_processes(samples=3, interval_s=0.01) >= 1
    finally:
        busy.kill()
        busy.wait()


def test_training_loop_consults_the_watch_at_every_batch(restore_threads):
    calls = []
    engine._thread_watch = lambda: calls.append(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(5)]
    opt = torch.optim.SGD(model.parameters(), 0.1)
    train_one_epoch(model, batches, opt, nn.CrossEntropyLoss(), torch.device("cpu"))
    assert len(calls) == 5
    engine.evaluate(model, batches[:2], nn.CrossEntropyLoss(), torch.device("cpu"))
    assert len(calls) == 7


def test_configure_installs_a_watch_only_for_a_cpu_run(restore_threads):
    engine.configure_cpu_threads(1)
    assert engine._thread_watch is None and torch.get_num_threads() == 1
    engine.configure_cpu_threads(1, warn=lambda m: None, adapt=True)
    assert isinstance(engine._thread_watch, ThreadWatch) and engine._thread_watch.adapt
    assert engine._thread_watch.threads == 1


@pytest.mark.parametrize("cls", [SearchConfig, FinalConfig])
def test_adapt_threads_is_a_flag_and_off_by_default(cls):
    assert from_arguments(cls, parse_args(cls, "", "x", [])).adapt_threads is False
    assert from_arguments(cls, parse_args(cls, "", "x", ["--adapt_threads"])).adapt_threads is True
