"""Inflating an image U-Net into the video U-Net, and temporal-only fine-tuning.

An image U-Net of the same family (`unet.image_config`: every level temporal='none')
loaded into the video U-Net with fresh temporal layers computes exactly the image
U-Net on every frame; `optim.trainable='temporal'` then trains the temporal layers
only, leaving every other parameter (and its EMA) bit for bit as loaded.
"""

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from imagen_video_jax import export, params_io, training
from imagen_video_jax import stage as stage_lib
from imagen_video_jax.models import unet as unet_lib
from imagen_video_jax.models.unet import LevelConfig, UNetConfig
from imagen_video_jax.training import checkpointing, loop as loop_lib, warm_start

import distributed_util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import digits as digits_config  # noqa: E402

T, H, W, L = 4, 8, 8, 5


def _video_cfg(scan_blocks=True):
  # Level 1's two blocks run as one nn.scan (scan_blocks): the stacked layout is inflated.
  return UNetConfig(
    levels=(
      LevelConfig(8, 1, temporal='conv', cross_attention=True),
      LevelConfig(16, 2, spatial_attention=True, temporal='attention', cross_attention=True),
    ),
    text_dim=8,
    emb_dim=16,
    head_dim=8,
    temporal_buckets=8,
    temporal_max_distance=8,
    scan_blocks=scan_blocks,
  )


def _perturbed(params, key, scale=0.2):
  """Every leaf moved by random noise: nothing is trivially zero (or one)."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
    treedef,
    [np.asarray(x + scale * jax.random.normal(k, x.shape, x.dtype)) for x, k in zip(leaves, keys)],
  )


def _image_params(cfg, key):
  init = jax.jit(unet_lib.init_fn(cfg, frames=1, height=H, width=W, text_len=L))
  return _perturbed(jax.device_get(nn.unbox(init(jax.random.key(0)))), key)


def _inputs():
  k = jax.random.split(jax.random.key(1), 4)
  x = jax.random.normal(k[0], (2, T, H, W, 3))
  logsnr = jax.random.uniform(k[1], (2, T), minval=-5.0, maxval=5.0)
  text = jax.random.normal(k[2], (2, T, L, 8))
  mask = jax.random.uniform(k[3], (2, T, L)) < 0.7
  frame_ids = jnp.array([[0, 0, 1, 1], [0, 1, 1, 1]], jnp.int32)  # two clips per row
  return x, logsnr, text, mask, frame_ids


def test_an_inflated_image_unet_is_the_image_unet_on_every_frame():
  video_cfg = _video_cfg()
  image_cfg = unet_lib.image_config(video_cfg)
  assert all(lv.temporal == 'none' for lv in image_cfg.levels)
  image = _image_params(image_cfg, jax.random.key(2))
  video = warm_start.inflate_params(
    image, video_cfg, jax.random.key(3), frames=T, height=H, width=W, text_len=L
  )
  flat_v, flat_i = params_io.flatten_params(video), params_io.flatten_params(image)
  fresh = sorted(set(flat_v) - set(flat_i))
  assert fresh and all(unet_lib.is_temporal(k) for k in fresh)
  assert {n.split('/')[1] for n in fresh} == set(unet_lib.TEMPORAL_LAYERS)
  assert any(n.startswith('down1_blocks/') for n in fresh)  # the scanned stack
  for k, v in flat_i.items():
    np.testing.assert_array_equal(flat_v[k], v, err_msg=k)

  x, logsnr, text, mask, fids = _inputs()
  apply = lambda cfg: jax.jit(
    lambda p, x, s, e, m, f: unet_lib.VideoUNet(cfg).apply({'params': p}, x, s, e, m, f)
  )
  image_apply, video_apply = apply(image_cfg), apply(video_cfg)
  # The image U-Net runs each frame on its own: one frame at a time gives its output
  # up to float rounding (other shapes, other summation orders) ...
  whole = np.asarray(image_apply(image, x, logsnr, text, mask, fids))
  one = lambda t: image_apply(
    image, *(a[:, t : t + 1] for a in (x, logsnr, text, mask)), jnp.zeros((2, 1), jnp.int32)
  )
  per_frame = np.concatenate([np.asarray(one(t)) for t in range(T)], axis=1)
  assert np.abs(whole).mean() > 1e-2  # a non-trivial function (the zero out-conv moved)
  np.testing.assert_allclose(whole, per_frame, rtol=0, atol=2e-5)
  # ... and the inflated video U-Net, with its two clips per row, is it exactly.
  out = np.asarray(video_apply(video, x, logsnr, text, mask, fids))
  np.testing.assert_array_equal(out, whole)

  # The check can fail: trained temporal layers mix frames.
  moved = {k: v + 0.1 if unet_lib.is_temporal(k) else v for k, v in flat_v.items()}
  out2 = np.asarray(video_apply(params_io.unflatten_params(moved), x, logsnr, text, mask, fids))
  assert np.abs(out2 - whole).max() > 1e-3


def test_inflating_refuses_params_of_another_family():
  video_cfg = _video_cfg()
  image = params_io.flatten_params(
    _image_params(unet_lib.image_config(video_cfg), jax.random.key(2))
  )
  name = next(k for k in image if k.endswith('conv1/kernel'))
  del image[name]  # a missing non-temporal parameter is still a misfit
  with pytest.raises(warm_start.WarmStartError, match=f'{name} missing'):
    warm_start.inflate_params(
      params_io.unflatten_params(image), video_cfg, jax.random.key(0), frames=T, height=H, width=W
    )


# ------------------------------------------------------------- the training entry point
def _digits(**overrides):
  c = digits_config.get_config('stage=base,tiny=True')
  c.log_every = 1
  return distributed_util.override(c, overrides)


@pytest.fixture(scope='module')
def image_stage(tmp_path_factory):
  """An exported image stage: the tiny digits base U-Net without temporal layers."""
  video = stage_lib.from_config(_digits())
  stage = dataclasses.replace(video, unet=unet_lib.image_config(video.unet))
  s = stage.spec
  init = jax.jit(unet_lib.init_fn(stage.unet, frames=s.frames, height=s.height, width=s.width))
  params = _perturbed(jax.device_get(nn.unbox(init(jax.random.key(0)))), jax.random.key(5), 0.05)
  directory = export.save_stage(
    str(tmp_path_factory.mktemp('image') / 'base'), stage.with_params(params)
  )
  return directory, video.unet, params


def _bits(a):
  a = np.asarray(a)
  return a.view(np.uint32) if a.dtype == np.float32 else a


def test_temporal_fine_tuning_from_an_image_stage_leaves_the_image_weights_as_loaded(
  image_stage, tmp_path, capsys
):
  src, video_cfg, image = image_stage
  data_dir = str(tmp_path / 'data')
  c = _digits(
    **{
      'data.dir': data_dir,
      'num_steps': 2,
      'init_from': src,
      'init_inflate': True,
      'optim.trainable': 'temporal',
      'optim.warmup_steps': 0,
      'optim.ema_decay': 0.9,
    }
  )
  run = training.train_and_evaluate(c, str(tmp_path / 'run'))
  assert run.step == 2 and all(np.isfinite(h['loss']) for h in run.history)
  out = capsys.readouterr().out
  assert 'Inflated:' in out and 'temporal parameters fresh' in out

  saved, ema, step = export.read_training_run(str(tmp_path / 'run'))
  assert step == 2 and saved['optim']['trainable'] == 'temporal' and saved['init_inflate']
  flat_image = params_io.flatten_params(image)
  fresh = params_io.flatten_params(
    warm_start.inflate_params(
      image, video_cfg, jax.random.key(0), frames=8, height=16, width=16, text_len=16
    )
  )
  zero_when_fresh = [k for k, v in fresh.items() if unet_lib.is_temporal(k) and not v.any()]
  assert zero_when_fresh
  for what, tree in (('params', jax.device_get(run.state.params)), ('EMA', ema)):
    flat = params_io.flatten_params(tree)
    assert sorted(flat) == sorted(fresh)
    for k, v in flat_image.items():  # every image parameter, bit for bit
      assert np.array_equal(_bits(flat[k]), _bits(v)), f'{what} {k} changed'
    # ... while the temporal layers trained: their zero-initialised kernels moved.
    assert any(flat[k].any() for k in zero_when_fresh), f'{what}: temporal layers did not train'

  # No Adam moments for the frozen parameters: mu and nu for each temporal one only.
  moments = [x for x in jax.tree.leaves(run.state.opt_state) if np.ndim(x) > 0]
  n_temporal = sum(unet_lib.is_temporal(k) for k in fresh)
  assert len(moments) == 2 * n_temporal

  # A resume without init_from / init_inflate stays the inflated run it began as.
  c.num_steps, c.init_from, c.init_inflate = 3, '', False
  again = training.train_and_evaluate(c, str(tmp_path / 'run'))
  assert again.step == 3
  saved, ema, _ = export.read_training_run(str(tmp_path / 'run'))
  assert saved['init_from'] == src and saved['init_inflate']
  for tree in (jax.device_get(again.state.params), ema):
    flat = params_io.flatten_params(tree)
    assert all(np.array_equal(_bits(flat[k]), _bits(v)) for k, v in flat_image.items())


def test_an_image_stage_without_init_inflate_is_refused(image_stage, tmp_path):
  src, _, _ = image_stage
  c = _digits(**{'data.dir': str(tmp_path / 'data'), 'num_steps': 1, 'init_from': src})
  with pytest.raises(training.ConfigError) as e:
    training.train_and_evaluate(c, str(tmp_path / 'run'))
  msg = str(e.value)
  assert 'does not fit' in msg and 'temporal' in msg and 'missing' in msg
  assert 'init_inflate=True' in msg
  assert not os.path.isdir(tmp_path / 'run' / 'checkpoints' / '1')


def test_ema_keeps_frozen_parameters_and_warms_up_only_fresh_ones():
  from imagen_video_jax.training.state import ema_update

  ema = {'loaded': jnp.full(3, 0.3), 'fresh': jnp.full(3, 0.3), 'frozen': jnp.full(3, 0.3)}
  params = {'loaded': jnp.ones(3), 'fresh': jnp.ones(3), 'frozen': jnp.full(3, 0.7)}
  out = ema_update(
    ema,
    params,
    0.999,
    jnp.asarray(0),
    warmup={'loaded': False, 'fresh': True, 'frozen': False},
    frozen={'loaded': False, 'fresh': False, 'frozen': True},
  )
  np.testing.assert_allclose(out['loaded'], 0.999 * 0.3 + 0.001, rtol=1e-6)
  np.testing.assert_allclose(out['fresh'], 0.1 * 0.3 + 0.9, rtol=1e-6)  # decay 1/10 at n=0
  assert out['frozen'] is ema['frozen']


# -------------------------------------------------------------------------- config
def test_optim_trainable_is_checked():
  with pytest.raises(training.ConfigError, match="optim.trainable 'spatial': use one of 'all'"):
    loop_lib.validate(_digits(**{'optim.trainable': 'spatial'}))
  image = _digits(**{'optim.trainable': 'temporal'})
  image.model.levels = tuple(dict(lv, temporal='none') for lv in image.model.levels)
  with pytest.raises(training.ConfigError, match="every level of model.levels has temporal='none'"):
    loop_lib.validate(image)
  loop_lib.validate(_digits(**{'optim.trainable': 'temporal'}))  # the video U-Net: fine


def test_runs_saved_before_optim_trainable_resume_training_everything():
  saved = {'optim': {'lr': 1e-3}, 'init_from': ''}
  now = {'optim': {'lr': 1e-3, 'trainable': 'all'}, 'init_from': '', 'init_inflate': False}
  assert checkpointing.config_differences(saved, now) == []
  now['optim']['trainable'] = 'temporal'  # another optimizer state: refused
  assert checkpointing.config_differences(saved, now) == [
    'optim.trainable: checkpoint "<absent>", now "temporal"'
  ]


@pytest.mark.parametrize('trainable', ['all', 'temporal'])
def test_optimizer_state_takes_its_parameters_shardings(trainable):
  from imagen_video_jax import parallel
  from imagen_video_jax.training import state as state_lib

  c = _digits(**{'optim.trainable': trainable})
  tx, _ = state_lib.make_optimizer(c.optim)
  mesh = parallel.mesh_from_config({'data': 1, 'fsdp': -1})
  boxed_init = unet_lib.init_fn(_video_cfg(), frames=T, height=H, width=W, text_len=L)
  abstract, sh = state_lib.state_shardings(boxed_init, tx, mesh, parallel.DEFAULT_RULES)
  is_sh = lambda x: isinstance(x, jax.sharding.NamedSharding)

  def specs(tree):  # {dict keys joined: spec} of every array sharding
    return {
      '/'.join(str(k.key) for k in path if hasattr(k, 'key')): s.spec
      for path, s in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_sh)[0]
    }

  params = specs(sh.params)
  assert any(any(a is not None for a in s) for s in params.values())  # some are split
  if trainable == 'all':  # what optax's own mapping gives
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    want = optax.tree_map_params(
      tx,
      lambda _, s: s,
      abstract.opt_state,
      sh.params,
      transform_non_params=lambda _: replicated,
      is_leaf=is_sh,
    )
    assert jax.tree.leaves(sh.opt_state, is_leaf=is_sh) == jax.tree.leaves(want, is_leaf=is_sh)
  shapes = [a.ndim for a in jax.tree.leaves(abstract.opt_state)]
  opt = jax.tree_util.tree_flatten_with_path(sh.opt_state, is_leaf=is_sh)[0]
  moments = [
    ('/'.join(str(k.key) for k in path if hasattr(k, 'key')), s.spec)
    for (path, s), ndim in zip(opt, shapes)
    if ndim > 0
  ]
  trained = [k for k in params if trainable == 'all' or unet_lib.is_temporal(k)]
  assert len(moments) == 2 * len(trained)  # mu and nu of each trained parameter ...
  for name, spec in moments:  # ... in its sharding
    (param,) = [k for k in trained if name == k or name.endswith('/' + k)]
    assert spec == params[param], name
