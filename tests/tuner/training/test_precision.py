"""Training precision: how `auto` resolves, and what a bf16 step changes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tuner.config import ConfigError, TrainConfig
from tuner.training.precision import cpu_has_native_bf16, resolve_precision
from tuner.training.steps import autoencoder_step, gan_step
from tuner.training.trial import build_trial

TINY = dict(dataset="mnist", g_width=8, d_width=8, batch_size=16, train_limit=256, fid_samples=64, seed=1)
YES, NO = (lambda: True), (lambda: False)
REPO = Path(__file__).resolve().parents[3]


def test_auto_picks_bf16_only_where_the_hardware_has_it():
    assert resolve_precision("auto", "cpu", cpu_bf16=YES, cuda_bf16=NO) == "bf16"
    assert resolve_precision("auto", "cpu", cpu_bf16=NO, cuda_bf16=YES) == "fp32"
    assert resolve_precision("auto", "cuda", cpu_bf16=YES, cuda_bf16=NO) == "fp32"
    assert resolve_precision("auto", "cuda", cpu_bf16=NO, cuda_bf16=YES) == "bf16"
    for device in ("cpu", "cuda"):  # an explicit choice is kept, whatever the hardware
        assert resolve_precision("fp32", device, cpu_bf16=YES, cuda_bf16=YES) == "fp32"
        assert resolve_precision("bf16", device, cpu_bf16=NO, cuda_bf16=NO) == "bf16"


def test_cpu_capability_is_read_from_the_cpu_flags():
    assert cpu_has_native_bf16("processor : 0\nflags : fpu sse2 avx512f avx512_bf16 avx512_vnni\n", isa_cap=None)
    assert cpu_has_native_bf16("flags : fpu amx_tile amx_bf16 amx_int8\n", isa_cap=None)
    assert not cpu_has_native_bf16("flags : fpu sse2 avx2 avx512f avx512_vnni\n", isa_cap=None)
    assert not cpu_has_native_bf16("model name : bf16 in a name is not a flag\nflags : fpu\n", isa_cap=None)
    # the flags are there, but torch's kernels are capped below AVX512: bf16 would be emulated
    assert not cpu_has_native_bf16("flags : fpu avx512f avx512_bf16\n", isa_cap="torch's CPU capability is AVX2")


CAPS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
PROBE = ("import torch; from tuner.training.precision import resolve_precision, torch_cpu_isa_cap; "
         "print(resolve_precision('auto', 'cpu'), torch_cpu_isa_cap())")


@pytest.mark.parametrize("caps", [{}, {"ATEN_CPU_CAPABILITY": "avx2"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}],
                         ids=["uncapped", "aten-capped", "onednn-capped"])  # either cap alone is enough
def test_auto_trains_in_fp32_where_torch_is_capped_below_avx512(caps):
    """A process capped to AVX2 (docs/testing.md) picks what an AVX2 CPU picks: fp32, whatever /proc/cpuinfo
    says. Uncapped, it picks bf16 exactly where the CPU flags list it (this machine: AVX512-BF16)."""
    env = {k: v for k, v in os.environ.items() if k not in CAPS}
    proc = subprocess.run([sys.executable, "-c", PROBE], env={**env, **caps, "PYTHONPATH": str(REPO)}, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    precision, cap = proc.stdout.split(maxsplit=1)
    if caps:
        assert precision == "fp32" and cap.strip() != "None", proc.stdout
    else:
        assert cap.strip() == "None"
        assert precision == ("bf16" if cpu_has_native_bf16(isa_cap=None) else "fp32")


def test_precision_is_validated():
    with pytest.raises(ConfigError, match="precision.*auto, fp32, bf16"):
        TrainConfig(precision="fp16")


def _params(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.mark.parametrize("loss,d_norm", [("hinge", "spectral"), ("wgan-gp", "batch"), ("bce", "none")])
def test_bf16_step_updates_fp32_state_like_an_fp32_step(idx_mnist, loss, d_norm):
    """One D+G step in bf16: every parameter, optimiser moment and BatchNorm / spectral-norm buffer stays
    fp32 and finite, both networks move, and the update points where the fp32 step's does."""
    images = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    deltas = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(**TINY, loss=loss, d_norm=d_norm, n_critic=1, precision=precision).resolved()
        trial = build_trial(cfg, torch.device("cpu"))
        assert trial.precision == precision
        before = {name: _params(net) for name, net in trial.nets.items()}
        out = gan_step(trial, images)
        assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in out.values())
        for name, net in trial.nets.items():
            for key, value in net.state_dict().items():
                if value.is_floating_point():
                    assert value.dtype == torch.float32 and torch.isfinite(value).all(), (precision, name, key)
            after = _params(net)
            assert any(not torch.equal(before[name][k], after[k]) for k in after), (precision, name)
            deltas[precision, name] = torch.cat([(after[k] - before[name][k]).flatten() for k in after])
        for opt in trial.opts.values():
            for state in opt.state.values():
                assert all(v.dtype == torch.float32 for v in state.values() if torch.is_tensor(v) and v.dim() > 0)
    for name in ("G", "D"):
        cosine = torch.nn.functional.cosine_similarity(deltas["fp32", name], deltas["bf16", name], dim=0)
        assert cosine > 0.9, (name, float(cosine))
    if d_norm == "spectral":  # the power iteration's vectors are fp32 buffers
        u = dict(trial.nets["D"].named_buffers())
        assert any(k.endswith("_u") for k in u) and all(v.dtype == torch.float32 for v in u.values())


def test_bf16_vae_step_stays_finite_and_fp32(idx_mnist):
    cfg = TrainConfig(dataset="mnist", family="vae", z_dim=4, g_width=8, d_width=8, batch_size=16, train_limit=256,
                      fid_samples=64, regularize=True, precision="bf16").resolved()
    trial = build_trial(cfg, torch.device("cpu"))
    before = _params(trial.nets["model"])
    out = autoencoder_step(trial, torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8))
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in out.values())
    after = _params(trial.nets["model"])
    assert all(v.dtype == torch.float32 for v in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in after)
