"""Sampling throughput: each stage's sampler compiled once per batch bucket, the guided
batch in one U-Net forward, the initial noise donated to the sampler.

The tiny three-stage cascade of tests/test_cascade.py; benchmarks/sampling_throughput.py
times the shipped one.
"""

import dataclasses
import warnings

import jax
import numpy as np
import pytest
from flax import linen as nn

from imagen_video_jax import cascade, sampling
from imagen_video_jax.models import unet as unet_lib
from test_cascade import _fake_text_encoder, _pipeline

PROMPTS = ['a red 3 moving left', 'a blue 7']


@pytest.fixture
def lowerings():
  """Counts the programs JAX lowers (every jit cache miss, the eager ops' included)."""
  from jax._src import dispatch

  names = []

  def listen(event, duration, fun_name=None, **kw):
    del duration, kw
    if event == dispatch.JAXPR_TO_MLIR_MODULE_EVENT:
      names.append(fun_name)

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield names
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)


def _samplers(pipe, **changes):
  return {s.name: dataclasses.replace(s.sampler, **changes) for s in pipe.stages}


def test_other_seed_steps_and_guidance_compile_nothing(lowerings, monkeypatch):
  traced = []
  real = cascade.sample_stage
  monkeypatch.setattr(
    cascade,
    'sample_stage',
    lambda stage, params, key, b, **kw: (
      traced.append((stage.name, b)) or real(stage, params, key, b, **kw)
    ),
  )
  # A base stage and an SR stage, nothing compiled yet.
  pipe = cascade.CascadePipeline(_pipeline().stages[:2], _fake_text_encoder)
  first = pipe(PROMPTS, num_samples=2, seed=0, progress=False).videos
  assert sorted(traced) == [('base', 4), ('tsr', 4)]
  assert lowerings
  before = len(lowerings)
  others = [
    pipe(PROMPTS, num_samples=2, seed=1, progress=False).videos,
    pipe(PROMPTS, num_samples=2, samplers_by_stage=_samplers(pipe, steps=5), progress=False).videos,
    pipe(
      PROMPTS,
      num_samples=2,
      samplers_by_stage=_samplers(pipe, guidance=6.0, guidance_low=1.0, oscillate_from=0.5),
      progress=False,
    ).videos,
  ]
  # Not one program lowered again: no sampler, no initial noise, no text encoding, no
  # eager op of the cascade's own.
  assert len(lowerings) == before, lowerings[before:]
  assert len(traced) == 2
  for other in others:
    assert np.abs(other.astype(int) - first).max() > 0  # each change did change the video
  # A negative prompt is an argument the samplers without one do not take: the first
  # compiles each stage's sampler once more (nothing else), other negative prompts nothing.
  pipe(PROMPTS, num_samples=2, negative_prompt='a green 1', progress=False)
  assert lowerings[before:] == ['jit(run)'] * 2 and len(traced) == 4
  pipe(PROMPTS, num_samples=2, seed=2, negative_prompt='a blue 9', progress=False)
  assert len(lowerings) == before + 2 and len(traced) == 4
  # Three prompts run in the same bucket (4): the samplers are not traced again.
  pipe(PROMPTS + ['a green 1'], progress=False)
  assert len(traced) == 4
  assert len(pipe._compiled) == 2 and all(f._cache_size() == 2 for f in pipe._compiled.values())


def test_guidance_runs_cond_and_uncond_as_one_forward(monkeypatch):
  """One U-Net application per traced step, at twice the batch: cond and uncond halves
  together. Two forwards of batch B (or a second pass for the uncond half) fail this."""
  batches = []
  real_apply = nn.Module.apply

  def apply(self, variables, z, *args, **kw):
    batches.append(z.shape[0])
    return real_apply(self, variables, z, *args, **kw)

  monkeypatch.setattr(unet_lib.VideoUNet, 'apply', apply, raising=False)
  stages = _pipeline().stages[:2]  # a base stage and an SR stage
  pipe = cascade.CascadePipeline(stages, _fake_text_encoder)
  pipe(PROMPTS[:1], num_samples=2, progress=False)
  assert batches == [4, 4], batches  # batch 2 (bucket 2): one forward of 4 per stage
  batches.clear()
  pipe(PROMPTS[:1], num_samples=2, seed=1, progress=False)  # compiled: no trace
  assert batches == []
  # A negative prompt (another program): its text is the uncond half of the same forward.
  pipe(PROMPTS[:1], num_samples=2, negative_prompt='a green 1', progress=False)
  assert batches == [4, 4], batches


def test_the_initial_noise_is_donated_and_samples_as_before(monkeypatch):
  noise = []
  real = cascade._initial_noise
  monkeypatch.setattr(cascade, '_initial_noise', lambda k, s: noise.append(real(k, s)) or noise[-1])
  pipe = cascade.CascadePipeline(_pipeline().stages[:2], _fake_text_encoder)
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # e.g. 'Some donated buffers were not usable'
    out = pipe(PROMPTS, seed=5, progress=False, return_intermediates=True)
  assert len(noise) == 2 and all(z.is_deleted() for z in noise)  # each buffer consumed

  # What the sampler draws itself from the same key, without the noise handed in: the
  # same base video, bit for bit (as uint8 and as floats).
  base = pipe.stages[0]
  emb, mask = (jax.numpy.asarray(a) for a in _fake_text_encoder(PROMPTS))
  key = jax.random.fold_in(jax.random.key(5), 0)
  own = jax.jit(lambda p, k: sampling.sample_stage(base, p, k, 2, text_emb=emb, text_mask=mask))(
    base.params, key
  )
  handed = jax.jit(
    lambda p, k, z: sampling.sample_stage(base, p, k, 2, text_emb=emb, text_mask=mask, z_init=z)
  )(base.params, key, sampling.initial_noise(key, sampling.noise_shape(base, 2)))
  np.testing.assert_array_equal(own, handed)
  np.testing.assert_array_equal(cascade.io.to_uint8(np.asarray(own)), out.intermediates['base'])
