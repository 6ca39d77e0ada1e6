"""Costly steps announce themselves (issue 21): before randomized smoothing and the adaptive suite start, the
evaluation prints what runs, on how many clips, with how many draws, steps or queries, then the time left
measured on the first clip or chunk, and shows a bar only on a terminal with bars on; the results do not change."""

from __future__ import annotations

import io
import itertools
import math
from functools import partial

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from crmt.callbacks.robustness import RobustnessReport
from crmt.robustness.evaluation import RobustnessEvaluator
from crmt.robustness.progress import Progress, format_duration
from crmt.robustness.settings import RobustnessSettings
from crmt.robustness.smoothing import SmoothingCertifier, SmoothingSettings
from crmt.robustness.suite import SUITES, AdaptiveSettings
from crmt.robustness.threats import Threat
from crmt.strategies import JointTraining
from helpers import make_trainer, validation_batch

SMOOTHING = SmoothingSettings(sigma=4.0, n0=8, n=64, alpha=0.01, batch=32, samples=4, seed=3)
ADAPTIVE = AdaptiveSettings(suite="quick", chunk=8, sanity_samples=4)
SETTINGS = RobustnessSettings(multimodal_eps=3.0, unimodal_eps=3.5, curve_radii=(), audit_samples=0,
                              smoothing=SMOOTHING, adaptive=ADAPTIVE)
CLIPS, BATCH, TICK = 30, 6, 5.0
"""Test clips fed (the ``data`` fixture's 30 validation clips), in batches of 6; the injected clock moves 5 s per read."""


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def ticking(seconds: float = TICK):
    """A clock that moves ``seconds`` every time it is read: every timed step takes exactly ``seconds``."""
    counter = itertools.count()
    return lambda: seconds * next(counter)


def lines(stream: io.StringIO, name: str) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line.startswith(f"{name}: ")]


# --- The estimate and the bar ----------------------------------------------------------------------------


def test_the_time_left_is_the_first_chunks_seconds_times_the_chunks_left():
    stream = io.StringIO()
    readings = iter([100.0, 112.0, 112.0, 150.0])  # the first chunk of 4 clips takes 12 s, the second 38 s
    progress = Progress(stream=stream, clock=lambda: next(readings))
    task = progress.task("Step", "what it does", total=20)
    with task.step(4):
        pass
    # 20 clips in chunks of 4: 4 chunks left after the first, 12 s each
    assert task.left == pytest.approx(12.0 * 4)
    with task.step(4):
        pass
    assert task.left == pytest.approx(48.0)  # the estimate is the first chunk's, printed once
    task.close()
    assert stream.getvalue().splitlines() == [
        "Step: what it does",
        "Step: the first 4 clips took 12 s: about 48 s left for the other 16 clips",
        "Step: 8 clips in 50 s",
    ]


@pytest.mark.parametrize("seconds, text", [(4.25, "4.2 s"), (42.4, "42 s"), (425, "7 min 5 s"), (26950, "7 h 29 min")])
def test_durations_read_as_seconds_minutes_or_hours(seconds, text):
    assert format_duration(seconds) == text


def run_three_clips(progress: Progress) -> None:
    task = progress.task("Step", "what it does", total=3)
    for _ in range(3):
        with task.step(1):
            pass


def test_a_bar_is_drawn_on_a_terminal_only_with_bars_on_and_only_by_rank_zero():
    terminal = Terminal()
    run_three_clips(Progress(stream=terminal, clock=ticking()))
    assert "\r" in terminal.getvalue() and "1/3" in terminal.getvalue(), "a bar where one should be: the test can fail"
    for progress in (Progress(stream=Terminal(), bar=False, clock=ticking()),  # the trainer's bar is off
                     Progress(stream=io.StringIO(), clock=ticking())):  # not a terminal (a log file, CI)
        run_three_clips(progress)
        output = progress.stream.getvalue()
        assert "\r" not in output and "1/3" not in output
        assert lines(progress.stream, "Step") == [
            "Step: what it does", "Step: the first clip took 5.0 s: about 10 s left for the other 2 clips",
            "Step: 3 clips in 15 s",
        ]
    silent = Progress(show=False, stream=Terminal(), clock=ticking())  # a rank other than zero
    run_three_clips(silent)
    assert silent.stream.getvalue() == ""


def test_the_trainer_decides_bars_and_ranks():
    without_bar = Progress.of_trainer(make_trainer(1))  # enable_progress_bar=False: progress_bar_callback is None
    assert make_trainer(1).progress_bar_callback is None
    assert (without_bar.show, without_bar.bar, without_bar.ranks) == (True, False, 1)
    with_bar = Progress.of_trainer(Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False))
    assert (with_bar.show, with_bar.bar) == (True, True)


# --- The evaluation's announcements ----------------------------------------------------------------------


def evaluate(model, data, progress: Progress | None) -> RobustnessEvaluator:
    """Feed the 30 validation clips, in batches of 6 with their dataset indices, to an evaluator of SETTINGS."""
    inputs, labels = validation_batch(data, size=CLIPS)
    evaluator = RobustnessEvaluator(model, SETTINGS, dataset_size=CLIPS)
    if progress is not None:
        evaluator.show_progress(progress, CLIPS)
    for rows in torch.arange(CLIPS).split(BATCH):
        evaluator.update([x[rows] for x in inputs], labels[rows], rows)
    return evaluator


def test_smoothing_and_the_suite_announce_their_clips_draws_and_measured_time_left(trained_jt, data):
    stream = io.StringIO()
    evaluator = evaluate(trained_jt, data, Progress(stream=stream, clock=ticking()))
    results = evaluator.finalize()

    # smoothing: 4 clips spread over the 30, each CERTIFY-ed in 3 scopes with n0 + n draws
    clips = len({j * CLIPS // SMOOTHING.samples for j in range(SMOOTHING.samples)})
    per_scope = SMOOTHING.n0 + SMOOTHING.n
    passes = 3 * (math.ceil(SMOOTHING.n0 / SMOOTHING.batch) + math.ceil(SMOOTHING.n / SMOOTHING.batch))
    announcement, estimate, total = lines(stream, "Randomized smoothing")
    assert announcement.startswith(f"Randomized smoothing: CERTIFY of {clips} test clips in 3 scopes (joint, visual, audio), "
                                   f"n0 8 + n 64 = {per_scope} noise draws per clip and scope ({3 * per_scope} per clip, "
                                   f"{passes} forward passes of at most 32 draws)")
    assert evaluator.smoother.task.left == pytest.approx(TICK * (clips - 1))
    assert estimate == (f"Randomized smoothing: the first clip took 5.0 s: about {format_duration(TICK * (clips - 1))} "
                        f"left for the other {clips - 1} clips")
    assert total == f"Randomized smoothing: {clips} clips in {format_duration(TICK * clips)}"

    # the suite: the first chunk is attacked once 8 correctly classified clips wait; it covers the test clips fed so far
    inputs, labels = validation_batch(data, size=CLIPS)
    with torch.no_grad():
        correct = trained_jt.fuse([trained_jt.encode_modality(m, x) for m, x in enumerate(inputs)]).logits.argmax(1) == labels
    cumulative = correct.reshape(-1, BATCH).sum(dim=1).cumsum(dim=0)
    covered = BATCH * (int((cumulative >= ADAPTIVE.chunk).nonzero()[0]) + 1)
    size = SUITES["quick"]
    steps = size.apgd_steps * size.restarts * (1 + min(size.targets, 3 - 1))
    announcement, estimate, *_ = lines(stream, "Adaptive evaluation")
    assert (f"up to {steps} gradient steps and {size.square_queries} queries per clip and scope, on the correctly "
            f"classified ones of {CLIPS} test clips in 3 scopes, {ADAPTIVE.chunk} at a time; then its sanity checks "
            f"on {ADAPTIVE.sanity_samples} clips") in announcement
    left = TICK / covered * (CLIPS - covered)
    assert evaluator.adaptive.task.left == pytest.approx(left)
    assert estimate == (f"Adaptive evaluation: the first {covered} test clips took 5.0 s: about {format_duration(left)} "
                        f"left for the other {CLIPS - covered} test clips")
    assert len(lines(stream, "Adaptive sanity checks")) == 2

    # announcing changes no result: the same certificates and attacks as without it
    quiet = evaluate(trained_jt, data, None).finalize()
    for scope, certificates in results.smoothed.items():
        assert torch.equal(certificates.prediction, quiet.smoothed[scope].prediction)
        assert torch.equal(certificates.radius, quiet.smoothed[scope].radius)
    for threat, value in results.correct.items():
        assert torch.equal(value, quiet.correct[threat]), threat
    assert any(threat.kind == "adaptive" for threat in results.correct) and Threat("clean") in results.correct


def test_smoothings_clip_counts_under_several_ranks(trained_jt):
    certifier = SmoothingCertifier(trained_jt, SMOOTHING, dataset_size=CLIPS, progress=Progress(ranks=2), expected=15)
    assert certifier.clip_counts() == (4, 2)  # 4 clips of the split, each rank about half
    assert "CERTIFY of 4 test clips (all 2 ranks together; about 2 on this rank), in 3 scopes" in certifier.announcement()
    alone = SmoothingCertifier(trained_jt, SMOOTHING, progress=Progress(), expected=3)  # no split size: the first ones
    assert alone.clip_counts() == (3, 3)


def test_the_report_announces_through_the_trainer_without_a_bar(data, tmp_path, capsys):
    seed_everything(0)
    model = JointTraining(3, data.input_shapes, encoder_width=4, optimizer=partial(torch.optim.Adam, lr=1e-2))
    settings = RobustnessSettings(multimodal_eps=3.0, unimodal_eps=3.5, curve_radii=(), audit_samples=0,
                                  smoothing=SmoothingSettings(n0=8, n=64, batch=64, samples=2),
                                  adaptive=AdaptiveSettings(suite="quick", chunk=64, sanity_samples=2))
    trainer = make_trainer(1, tmp_path, callbacks=[RobustnessReport(settings, output_dir=str(tmp_path / "report"))])
    trainer.fit(model, datamodule=data)
    capsys.readouterr()
    trainer.test(model, datamodule=data, verbose=False)
    output = capsys.readouterr().out
    assert "Randomized smoothing: CERTIFY of 2 test clips in 3 scopes" in output
    assert f"on the correctly classified ones of {len(data.val_set)} test clips in 3 scopes" in output
    assert "Randomized smoothing: 2 clips in " in output and "Adaptive sanity checks: done in " in output
    assert "\r" not in output  # the trainer's progress bar is off: no bar
