"""benchmarks/scale.py at tiny sizes on CPU: every JSON field, the same step in both loops, the import chain."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from benchmarks import scale

ROOT = Path(__file__).resolve().parents[1]

NUMBER_FIELDS = {
    "step1_clips_per_s": {
        "lightning_fp32", "plain_fp32", "plain_cl_fp32", "lightning_bf16", "plain_bf16", "plain_cl_bf16",
    },
    "step1_ratios": {
        "lightning_overhead_fp32", "lightning_overhead_bf16", "bf16_speedup_lightning", "bf16_speedup_plain",
        "bf16_speedup_plain_cl", "channels_last_speedup_fp32", "channels_last_speedup_bf16",
    },
    "tau_s": {"loop", "batched", "lower_limit"},
    "tau_ratios": {"loop_over_lower_limit", "batched_over_lower_limit", "batched_over_loop", "batched_max_rel_diff"},
    "epoch_s": {"step1_epoch", "step2_epoch", "step1_over_step2"},
    "memory_mib": {
        "resident", "step1_lightning_fp32", "step1_plain_fp32", "step1_lightning_bf16", "step1_plain_bf16",
        "step1_plain_cl_fp32", "step1_plain_cl_bf16",
        "tau_loop", "tau_batched", "tau_lower_limit", "step1_epoch", "step2_epoch",
    },
}


@pytest.fixture
def one_thread():
    """One torch thread, restored after: two threads on a shared 2-core machine are many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_field_is_a_number_and_the_json_is_written(tmp_path, one_thread):
    out = tmp_path / "scale.json"
    argv = ["--device", "cpu", "--batch", "4", "--steps", "2", "--warmup", "1", "--batches", "1", "--repeats", "1"]
    results = scale.main([*argv, "--out", str(out)])
    assert json.loads(out.read_text()) == results
    for section, fields in NUMBER_FIELDS.items():
        assert set(results[section]) >= fields, section
        for field in fields:
            value = results[section][field]
            assert isinstance(value, float | int) and not isinstance(value, bool), (section, field, value)
    assert results["errors"] == {}
    assert results["device"]["type"] == "cpu" and results["sizes"]["clips"] == 4
    assert {"name", "cpu_threads", "torch", "lightning"} <= set(results["device"])


def test_lightning_fit_and_plain_loop_take_the_same_steps(one_thread):
    """Same init, same batches, fp32: the Trainer's CRMT-JT step 1 and the plain loop end with the same state."""
    sizes = replace(scale.TINY, batch=4, batches=2)
    torch.manual_seed(0)
    model = scale.build_model(sizes)
    twin, initial = copy.deepcopy(model), copy.deepcopy(model.state_dict())
    loader = scale.synthetic_batches(sizes, torch.device("cpu")) * 2
    scale.lightning_step1(model, loader, warmup=1, bf16=False)
    scale.plain_step1(twin, loader, warmup=1, bf16=False)
    trained, plain = model.state_dict(), twin.state_dict()
    assert not torch.equal(trained["head.integration"], initial["head.integration"])
    assert not torch.equal(trained["encoders.audio.trunk.stem.0.weight"], initial["encoders.audio.trunk.stem.0.weight"])
    for name, value in trained.items():
        torch.testing.assert_close(plain[name], value, rtol=1e-5, atol=1e-7, msg=name)


def test_imports_without_jsonargparse_av_wandb_torchaudio():
    """The GPU machine has none of them: hide their modules and their package metadata, then import."""
    code = """
import importlib.metadata as metadata, sys
hidden = ("jsonargparse", "av", "wandb", "torchaudio")
for name in hidden:
    sys.modules[name] = None
from_name = metadata.Distribution.from_name.__func__
def without_hidden(cls, name):
    if name.lower() in hidden:
        raise metadata.PackageNotFoundError(name)
    return from_name(cls, name)
metadata.Distribution.from_name = classmethod(without_hidden)
import benchmarks.scale, benchmarks.sound_certificate
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_smoothing_benchmark_times_certify_and_pgd(tmp_path, one_thread):
    """benchmarks/smoothing.py at tiny sizes: the JSON it writes, and the cost of 1000 draws from the clip's."""
    from benchmarks import smoothing

    out = tmp_path / "smoothing.json"
    results = smoothing.main(["--device", "cpu", "--n0", "4", "--n", "16", "--clips", "1", "--repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == results
    assert results["settings"]["scopes"] == 3 and results["certify_host_noise_s"] is None
    assert results["certify_s_per_1000_draws"] == pytest.approx(results["certify_s"] / 0.020)
    assert results["certify_over_pgd"] == pytest.approx(results["certify_s"] / results["pgd_s"])


def test_sound_certificate_benchmark_times_both_certificates_of_the_same_model(tmp_path, one_thread):
    """benchmarks/sound_certificate.py at tiny sizes: the JSON it writes and its ratio."""
    from benchmarks import sound_certificate

    out = tmp_path / "sound.json"
    results = sound_certificate.main(["--device", "cpu", "--n0", "4", "--n", "16", "--clips", "1", "--repeats", "1",
                                      "--out", str(out)])
    assert json.loads(out.read_text()) == results
    assert results["sizes"]["encoder"] == "lipschitz" and results["settings"]["scopes"] == 3
    assert results["smoothing_over_sound"] == pytest.approx(results["smoothing_s"] / results["sound_s"])
