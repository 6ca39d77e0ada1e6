"""What ``make bench`` prints while it works: a line per stage, and per round the seconds of each candidate as
it finishes (one line per round, written as it goes), each stamped with the seconds since the benchmark started,
so that a run on busy cores shows it is working (``benchmarks.run`` once printed nothing for 15 minutes)."""

from __future__ import annotations

import time

_START = time.perf_counter()


def stamp(tag: str) -> str:
    """``[bench <tag>, 12 s]``: the benchmark and the seconds since this module was imported (its start)."""
    return f"[bench {tag}, {time.perf_counter() - _START:.0f} s]"


def note(tag: str, message: str) -> None:
    """One line, flushed at once (a log file sees it now)."""
    print(f"{stamp(tag)} {message}", flush=True)


class Rounds:
    """One line per round of interleaved candidates: ``[bench run, 40 s] tau~ round 2/4: loop 8.6 s, batched ...``,
    each candidate's seconds written as it finishes. ``tag`` None: silent."""

    def __init__(self, tag: str | None, what: str, rounds: int) -> None:
        self.tag, self.what, self.rounds = tag, what, rounds

    def start(self, index: int) -> None:
        if self.tag is not None:
            warm = " (warm-up)" if index == 0 else ""
            print(f"{stamp(self.tag)} {self.what} round {index + 1}/{self.rounds}{warm}:", end="", flush=True)

    def done(self, name: str, seconds: float, last: bool) -> None:
        if self.tag is not None:
            print(f" {name} {seconds:.2f} s" + ("" if last else ","), end="\n" if last else "", flush=True)
