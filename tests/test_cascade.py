"""CascadePipeline: conditioning as in training, chaining, seeds, prompts, outputs."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from imagen_video_jax import cascade, sampling
from imagen_video_jax.data import pipeline
from imagen_video_jax.data.pipeline import StageSpec
from imagen_video_jax.diffusion.samplers import SamplerConfig
from imagen_video_jax.stage import Stage
from imagen_video_jax.models import unet as unet_lib

D = 8


def test_sr_conditioning_matches_the_training_pipeline():
  rng = np.random.default_rng(0)
  video = rng.uniform(-1, 1, (16, 32, 32, 3)).astype(np.float32)
  ids = np.zeros(16, np.int32)
  ssr = StageSpec(frames=16, height=32, width=32, kind='ssr', factor=2)
  low = pipeline.resize_frames(video, 16, 16, antialias=True)  # what the previous stage makes
  np.testing.assert_allclose(
    sampling.sr_conditioning(jnp.asarray(low)[None], ssr)[0],
    pipeline.sr_condition(video, ids, ssr),
    atol=1e-5,
  )
  tsr = StageSpec(frames=16, height=32, width=32, kind='tsr', factor=2)
  np.testing.assert_allclose(
    sampling.sr_conditioning(jnp.asarray(video[::2])[None], tsr)[0],
    pipeline.sr_condition(video, ids, tsr),
    atol=0,
  )
  with pytest.raises(ValueError, match='needs a 8x32x32 input'):
    sampling.sr_conditioning(jnp.zeros((1, 16, 32, 32, 3)), tsr)


def _fake_text_encoder(prompts):
  """Deterministic embeddings from the characters of each prompt."""
  emb = np.zeros((len(prompts), 6, D), np.float32)
  mask = np.zeros((len(prompts), 6), bool)
  for i, p in enumerate(prompts):
    for j, ch in enumerate(p.encode()[:6]):
      emb[i, j] = np.sin(np.arange(D) * (ch % 17 + 1))
      mask[i, j] = True
  return emb, mask


def _stage(name, spec, sr, seed, fps, frame_cond=False):
  cfg = unet_lib.UNetConfig(
    levels=(
      unet_lib.LevelConfig(8, 1, temporal='attention' if not sr else 'conv', cross_attention=True),
    ),
    text_dim=D,
    emb_dim=16,
    head_dim=8,
    cond_channels=3 if sr else 0,
    cond_augment=sr,
    frame_cond=frame_cond,
  )
  params = jax.jit(
    lambda k: nn.unbox(
      unet_lib.init_params(  # jitted: eager init is slow
        cfg, k, frames=spec.frames, height=spec.height, width=spec.width
      )
    )
  )(jax.random.key(seed))
  params = jax.device_get(params)
  rng = np.random.default_rng(seed)  # live weights everywhere (fresh outputs are zero)
  params = jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape).astype(np.float32), params)
  return Stage(name, spec, cfg, params, fps=fps, sampler=SamplerConfig(steps=3, guidance=3.0))


@functools.lru_cache(maxsize=1)
def _pipeline():
  stages = [
    _stage('base', StageSpec(frames=4, height=8, width=8), False, 0, 4),
    _stage('tsr', StageSpec(frames=8, height=8, width=8, kind='tsr', factor=2), True, 1, 8),
    _stage('ssr', StageSpec(frames=8, height=16, width=16, kind='ssr', factor=2), True, 2, 8),
  ]
  return cascade.CascadePipeline(stages, _fake_text_encoder)


def test_cascade_end_to_end_shapes_seeds_prompts_and_intermediates():
  pipe = _pipeline()
  out = pipe(
    ['a red 3 moving left', 'a blue 7'],
    num_samples=2,
    seed=0,
    return_intermediates=True,
    progress=False,
  )
  assert out.videos.shape == (4, 8, 16, 16, 3) and out.videos.dtype == np.uint8
  assert out.fps == 8 and out.prompts[:2] == ['a red 3 moving left'] * 2
  assert out.intermediates['base'].shape == (4, 4, 8, 8, 3)
  assert out.intermediates['tsr'].shape == (4, 8, 8, 8, 3)
  np.testing.assert_array_equal(out.intermediates['ssr'], out.videos)
  assert len(pipe._compiled) == 3
  again = pipe(['a red 3 moving left', 'a blue 7'], num_samples=2, seed=0, progress=False)
  np.testing.assert_array_equal(again.videos, out.videos)  # same seed, same videos
  assert len(pipe._compiled) == 3  # and no recompilation
  other = pipe(['a red 3 moving left', 'a blue 7'], num_samples=2, seed=1, progress=False)
  assert np.abs(other.videos.astype(int) - out.videos).max() > 0
  # Samples of one prompt differ from each other; a negative prompt changes the result.
  assert np.abs(out.videos[0].astype(int) - out.videos[1]).max() > 0
  neg = pipe(
    ['a red 3 moving left', 'a blue 7'],
    num_samples=2,
    seed=0,
    negative_prompt='zzz',
    progress=False,
  )
  assert np.abs(neg.videos.astype(int) - out.videos).max() > 0


def test_per_stage_sampler_overrides_and_errors(tmp_path):
  pipe = _pipeline()
  override = SamplerConfig(steps=2, guidance=1.0, clip='dynamic')
  out = pipe(
    'a green 1',
    seed=3,
    progress=False,
    samplers_by_stage={'ssr': override},
    return_intermediates=True,
  )
  assert out.videos.shape == (1, 8, 16, 16, 3)
  # The override is what ran: a cascade whose SSR stage has it as its own sampler makes
  # the same video, bit for bit; the stage's own sampler makes another; the stages before
  # it are untouched.
  base, tsr, ssr = pipe.stages
  same = cascade.CascadePipeline(
    [base, tsr, dataclasses.replace(ssr, sampler=override)], _fake_text_encoder
  )
  np.testing.assert_array_equal(same('a green 1', seed=3, progress=False).videos, out.videos)
  plain = pipe('a green 1', seed=3, progress=False, return_intermediates=True)
  assert np.abs(plain.videos.astype(int) - out.videos).max() > 0
  for name in ('base', 'tsr'):
    np.testing.assert_array_equal(plain.intermediates[name], out.intermediates[name])
  paths = out.save(str(tmp_path / 'demo'))
  assert sorted(paths[0]) == ['gif', 'mp4', 'png']
  with pytest.raises(ValueError, match=r"no stage named \['nope'\]"):
    pipe('x', samplers_by_stage={'nope': SamplerConfig()})
  with pytest.raises(ValueError, match='is conditioned on 8x8x8'):
    cascade.CascadePipeline([base, ssr], _fake_text_encoder)
  with pytest.raises(ValueError, match='must be a base stage'):
    cascade.CascadePipeline([tsr], _fake_text_encoder)
  with pytest.raises(ValueError, match='pass a text_encoder'):
    cascade.CascadePipeline([base], None)


def _spy_sample_stage(monkeypatch):
  """Records (stage, batch) each time a cascade sampler is traced."""
  traces, real = [], cascade.sample_stage

  def spy(stage, params, key, batch_size, **kw):
    traces.append((stage.name, batch_size))
    return real(stage, params, key, batch_size, **kw)

  monkeypatch.setattr(cascade, 'sample_stage', spy)
  return traces


def test_steps_guidance_seeds_and_num_samples_reuse_the_compiled_samplers(monkeypatch):
  traces = _spy_sample_stage(monkeypatch)
  pipe = cascade.CascadePipeline(_pipeline().stages, _fake_text_encoder)  # nothing compiled
  prompts = ['a red 3 moving left', 'a blue 7']

  def run(num_samples, seed, **changes):
    per_stage = {s.name: dataclasses.replace(s.sampler, **changes) for s in pipe.stages}
    kw = dict(num_samples=num_samples, seed=seed, samplers_by_stage=per_stage, progress=False)
    return pipe(prompts, **kw).videos

  first = run(2, 0)
  assert sorted(traces) == [('base', 4), ('ssr', 4), ('tsr', 4)]
  others = [run(2, 1), run(2, 0, steps=5), run(2, 0, guidance=6.0, guidance_low=1.0)]
  batch3 = pipe(prompts + ['a green 1'], num_samples=1, seed=0, progress=False).videos  # 3 -> 4
  assert len(traces) == 3, traces  # no call after the first traced a sampler again
  assert len(pipe._compiled) == 3 and all(f._cache_size() == 1 for f in pipe._compiled.values())
  assert batch3.shape[0] == 3
  for other in others:
    assert np.abs(other.astype(int) - first).max() > 0  # and each change did change the video
  run(1, 0)  # batch 2: another bucket, compiled once more
  assert sorted(traces[3:]) == [('base', 2), ('ssr', 2), ('tsr', 2)]


def test_a_padded_batch_samples_each_row_as_the_unpadded_batch_does(monkeypatch):
  assert [cascade.batch_bucket(n) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, 16]
  traces = _spy_sample_stage(monkeypatch)
  floats = []
  to_uint8 = cascade.io.to_uint8
  monkeypatch.setattr(cascade.io, 'to_uint8', lambda x: floats.append(np.array(x)) or to_uint8(x))
  stages = _pipeline().stages
  ancestral = {s.name: dataclasses.replace(s.sampler, sampler='ancestral') for s in stages}

  def run():
    floats.clear()
    pipe = cascade.CascadePipeline(stages, _fake_text_encoder)
    prompts = ['a red 3 moving left', 'a blue 7', 'a green 1']
    for samplers_by_stage in (None, ancestral):  # noise of the start, and of every step
      pipe(
        prompts,
        seed=4,
        negative_prompt='zzz',
        samplers_by_stage=samplers_by_stage,
        progress=False,
        return_intermediates=True,
      )
    return list(floats)

  padded = run()
  monkeypatch.setattr(cascade, 'batch_bucket', lambda n: n)
  exact = run()
  assert {b for _, b in traces} == {4, 3}  # 3 prompts ran padded to 4, then as 3
  assert len(padded) == len(exact) == 8  # 3 stages and the output, twice
  for got, want in zip(padded, exact):
    assert got.shape[0] == 3
    np.testing.assert_array_equal(got, want)
