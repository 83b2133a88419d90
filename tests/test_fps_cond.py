"""fps conditioning: a U-Net that reads each row's frame rate, the cascade's rate per stage,
and sampling at a requested rate. (The data side, frame strides drawn per row, is in
test_data_pipeline.py; a training run with it in test_frame_cond.py.)"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from imagen_video_jax import params_io, sampling
from imagen_video_jax.models import unet as unet_lib
from imagen_video_jax.models.unet import LevelConfig, UNetConfig
from imagen_video_jax.training import warm_start

T, H, W, L = 4, 8, 8, 5


def _cfg(**kw):
  return UNetConfig(
    levels=(LevelConfig(8, 1, temporal='conv', cross_attention=True),),
    text_dim=8,
    emb_dim=16,
    head_dim=8,
    **kw,
  )


def _params(cfg, key):
  p = jax.device_get(
    nn.unbox(unet_lib.init_params(cfg, jax.random.key(0), frames=T, height=H, width=W, text_len=L))
  )
  leaves, treedef = jax.tree.flatten(p)
  keys = jax.random.split(jax.random.key(key), len(leaves))
  return jax.tree.unflatten(
    treedef, [x + 0.2 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  )


def test_the_frame_rate_embedding_starts_at_zero_and_ignores_still_rows():
  plain = _params(_cfg(), 1)
  fresh = jax.device_get(
    nn.unbox(
      unet_lib.init_params(
        _cfg(fps_embed=True), jax.random.key(0), frames=T, height=H, width=W, text_len=L
      )
    )
  )
  loaded = warm_start.fit_params(plain, False, fresh, _cfg(fps_embed=True), 'plain')
  new = warm_start.fresh_names(loaded, fresh)
  assert new and all(n.startswith(unet_lib.FPS_EMBEDDING + '/') for n in new)
  both = params_io.flatten_params(fresh)
  both.update(params_io.flatten_params(loaded))
  both = params_io.unflatten_params(both)
  ks = jax.random.split(jax.random.key(3), 2)
  x = jax.random.normal(ks[0], (3, T, H, W, 3))
  text, mask = jax.random.normal(ks[1], (3, L, 8)), jnp.ones((3, L), bool)
  logsnr = jnp.full((3,), 0.5)
  reads = jax.jit(
    lambda p, fps: unet_lib.VideoUNet(_cfg(fps_embed=True)).apply(
      {'params': p}, x, logsnr, text, mask, fps=fps
    )
  )
  want = jax.jit(lambda p: unet_lib.VideoUNet(_cfg()).apply({'params': p}, x, logsnr, text, mask))(
    plain
  )
  rates = jnp.array([4.0, 8.0, 0.0])
  # Warm-started: the source's output (to rounding), whatever the rate.
  np.testing.assert_allclose(np.asarray(reads(both, rates)), np.asarray(want), atol=1e-5, rtol=0)
  # Trained (a live embedding): the rate changes the output, but not a still row's (fps 0).
  live = _params(_cfg(fps_embed=True), 1)
  live_plain = {k: v for k, v in live.items() if k != unet_lib.FPS_EMBEDDING}
  a, b = np.asarray(reads(live, rates)), np.asarray(reads(live, rates.at[:2].set(16.0)))
  assert np.abs(a[:2] - b[:2]).max() > 1e-3
  np.testing.assert_array_equal(a[2], b[2])
  still = jax.jit(lambda p: unet_lib.VideoUNet(_cfg()).apply({'params': p}, x, logsnr, text, mask))(
    live_plain
  )
  np.testing.assert_allclose(a[2], np.asarray(still)[2], atol=1e-5, rtol=0)
  with pytest.raises(ValueError, match='pass fps'):
    unet_lib.VideoUNet(_cfg(fps_embed=True)).apply({'params': live}, x, logsnr, text, mask)
  with pytest.raises(ValueError, match='no fps_embed'):
    unet_lib.VideoUNet(_cfg()).apply({'params': plain}, x, logsnr, text, mask, fps=rates)


def _pipeline(reads):
  from test_cascade import _fake_text_encoder, _stage

  from imagen_video_jax import cascade
  from imagen_video_jax.stage import StageSpec

  specs = [
    ('base', StageSpec(frames=4, height=8, width=8), False, 4),
    ('tsr', StageSpec(frames=8, height=8, width=8, kind='tsr', factor=2), True, 8),
    ('ssr', StageSpec(frames=8, height=16, width=16, kind='ssr', factor=2), True, 8),
  ]
  stages = []
  for i, (name, spec, sr, fps) in enumerate(specs):
    st = _stage(name, spec, sr, i, fps)
    if name in reads:  # the same weights plus a live frame-rate embedding
      cfg = dataclasses.replace(st.unet, fps_embed=True)
      init = jax.device_get(
        nn.unbox(
          unet_lib.init_params(
            cfg, jax.random.key(i), frames=spec.frames, height=spec.height, width=spec.width
          )
        )
      )
      emb = jax.tree.map(
        lambda v: v + 0.3 * np.random.default_rng(i).standard_normal(v.shape).astype(np.float32),
        init[unet_lib.FPS_EMBEDDING],
      )
      st = dataclasses.replace(st, unet=cfg, params={**st.params, unet_lib.FPS_EMBEDDING: emb})
    stages.append(st)
  return cascade.CascadePipeline(stages, _fake_text_encoder)


def test_the_cascade_samples_each_stage_at_its_share_of_the_requested_rate():
  pipe = _pipeline(reads=('base', 'tsr'))
  # 16 fps videos: the TSR stage (factor 2) and the SSR stage after it run at 16 fps, the
  # base at 8; by default every stage at its own rate.
  assert pipe.stage_rates(16.0) == [8.0, 16.0, None]
  assert pipe.stage_rates(None) == [4.0, 8.0, None]
  own = pipe('a red 3', seed=0, progress=False)
  same = pipe('a red 3', seed=0, fps=8.0, progress=False)
  np.testing.assert_array_equal(own.videos, same.videos)  # 8 fps is the cascade's own rate
  fast = pipe('a red 3', seed=0, fps=16.0, progress=False)
  assert fast.fps == 16.0 and np.abs(fast.videos.astype(int) - own.videos).max() > 0
  for fps, msg in ((0.0, 'fps must be a number > 0'), (float('nan'), 'fps must be')):
    with pytest.raises(ValueError, match=msg):
      pipe('a red 3', fps=fps, progress=False)
  with pytest.raises(ValueError, match='no stage of this cascade reads a frame rate'):
    _pipeline(reads=())('a red 3', fps=8.0, progress=False)
  # One stage alone: its sampler refuses a rate it cannot read.
  with pytest.raises(ValueError, match='takes no frame rate'):
    st = _pipeline(reads=()).stages[0]
    emb, mask = jnp.ones((1, 6, 8)), jnp.ones((1, 6), bool)
    sampling.sample_stage(
      st, st.params, jax.random.key(0), 1, text_emb=emb, text_mask=mask, fps=8.0
    )


def test_the_train_config_needs_frame_strides_for_fps_conditioning():
  import os
  import sys

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import digits as digits_config

  from imagen_video_jax.training import loop as loop_lib

  c = digits_config.get_config('stage=base,tiny=True')
  c.model.fps_embed = True
  with pytest.raises(loop_lib.ConfigError, match='set data.frame_strides'):
    loop_lib.validate(c)
  c.data.frame_strides = '1,x'
  with pytest.raises(loop_lib.ConfigError, match='give comma-separated strides'):
    loop_lib.validate(c)
  c.data.frame_strides = '1,2'
  loop_lib.validate(c)
