"""Activation sharding: one example's frames and rows split over the mesh's `time` and
`space` axes compute what one device computes.

Tests marked `multidevice` need 8 devices; `test_on_eight_fake_devices` re-runs them in a
subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8 (the flag must be set
before jax starts, so it cannot be set here).
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from imagen_video_jax import parallel
from imagen_video_jax.configs import common
from imagen_video_jax.models import attention
from imagen_video_jax.models.unet import LevelConfig, UNetConfig, VideoUNet, init_params
from imagen_video_jax.training import state as state_lib
from imagen_video_jax.training import step as step_lib

import distributed_util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EIGHT = jax.device_count() >= 8
multidevice = pytest.mark.skipif(not EIGHT, reason='needs 8 devices (test_on_eight_fake_devices)')
P = jax.sharding.PartitionSpec

B, T, H, W, L, D = 2, 8, 16, 16, 4, 16

# An SR-shaped U-Net: temporal convolutions at full size; at half size temporal
# attention, spatial self-attention and text cross-attention.
_UNET = UNetConfig(
  levels=(
    LevelConfig(16, 1, temporal='conv'),
    LevelConfig(32, 1, spatial_attention=True, temporal='attention', cross_attention=True),
  ),
  cond_channels=3,
  cond_augment=True,
  text_dim=D,
  emb_dim=32,
  head_dim=8,
)


def _config():
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict(_UNET.to_dict())
  c.diffusion = common.diffusion()
  c.optim = common.optim(lr=1.0, warmup_steps=0, ema_decay=0.9)
  return c


def _batch():
  rng = np.random.default_rng(0)
  fids = np.zeros((B, T), np.int32)
  fids[1] = [0, 0, 0, 1, 1, 1, 2, -1]  # three clips and a padding frame
  mask = np.ones((B, T, L), bool)
  mask[0, :, 2:] = False
  return {
    'video': rng.uniform(-1, 1, (B, T, H, W, 3)).astype(np.float32),
    'cond': rng.uniform(-1, 1, (B, T, H, W, 3)).astype(np.float32),
    'frame_ids': fids,
    'text_emb': rng.normal(size=(B, T, L, D)).astype(np.float32),
    'text_mask': mask,
  }


def _grads_and_loss(mesh):
  """One real train step (`make_train_step`) with SGD at lr 1: params - new params are
  the gradients, exactly."""
  config = _config()
  model = VideoUNet(_UNET)
  params = parallel._values(init_params(_UNET, jax.random.key(1), frames=T, height=H, width=W))
  # Non-zero temporal and output layers (they start at zero): every path carries gradient.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(2), len(leaves))
  params = tree.unflatten([p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
  tx = optax.sgd(1.0)
  state = state_lib.TrainState.create(params, tx)
  step = step_lib.make_train_step(config, model, None, tx, lambda n: 1.0, jax.random.key(3))
  batch = _batch()
  with parallel.mesh_context(mesh, constrain_activations=True):
    fn = jax.jit(step)
    lowered = fn.lower(state, batch, None)
    compiled = lowered.compile()
    new_state, metrics = compiled(state, batch, None)
  grads = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), state.params, new_state.params)
  return float(metrics['loss']), grads, compiled


@multidevice
def test_train_step_with_frames_and_rows_split_matches_one_device():
  one = parallel.make_mesh(devices=jax.devices()[:1])
  loss1, grads1, compiled1 = _grads_and_loss(one)
  mesh = parallel.make_mesh(data=2, time=2, space=2)
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 1, 'time': 2, 'space': 2, 'tensor': 1}
  loss8, grads8, compiled = _grads_and_loss(mesh)
  assert np.isfinite(loss1) and abs(loss8 - loss1) <= 1e-5 * max(1.0, abs(loss1))
  flat1, flat8 = jax.tree.leaves(grads1), jax.tree.leaves(grads8)
  assert max(np.abs(g).max() for g in flat1) > 1e-3  # gradients to compare
  for g1, g8 in zip(flat1, flat8):
    np.testing.assert_allclose(g8, g1, atol=1e-5, rtol=1e-5)
  # Really split: the step exchanges halos (collective-permute), and one device holds an
  # eighth of the one-device step's activations (half an example's quarter), about.
  assert 'collective-permute' in compiled.as_text()
  ratio = compiled.memory_analysis().temp_size_in_bytes / max(
    1, compiled1.memory_analysis().temp_size_in_bytes
  )
  assert ratio < 0.25, ratio


def _temporal_attention():
  module = attention.TemporalSelfAttention(head_dim=8, num_buckets=8, max_distance=16)
  x = jax.random.normal(jax.random.key(0), (B, T, H, W, 16))
  fids = jnp.asarray(_batch()['frame_ids'])
  params = module.init(jax.random.key(1), x, fids)['params']
  params = jax.tree.map(
    lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), parallel._values(params)
  )

  def loss(p, x):
    y = module.apply({'params': p}, x, fids)
    return jnp.sum(jnp.sin(y) * jnp.cos(x))  # depends on every output value

  return jax.value_and_grad(loss, argnums=(0, 1)), params, x


@multidevice
def test_temporal_attention_with_split_frames_matches_one_device():
  fn, params, x = _temporal_attention()
  ref_value, ref_grads = jax.jit(fn)(params, x)
  mesh = parallel.make_mesh(data=1, time=4, space=2)
  with parallel.mesh_context(mesh, constrain_activations=True):
    xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, P(None, 'time', 'space')))
    compiled = jax.jit(fn).lower(params, xs).compile()
    value, grads = compiled(params, xs)
  assert xs.addressable_shards[0].data.shape == (B, T // 4, H // 2, W, 16)
  np.testing.assert_allclose(float(value), float(ref_value), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
  # The split moves from frames to pixels for the attention: all-to-all, not a gather
  # of every frame onto every device.
  assert 'all-to-all' in compiled.as_text()


def test_constrain_is_a_no_op_without_a_mesh_and_fits_uneven_axes():
  x = jnp.arange(2 * 3 * 5, dtype=jnp.float32).reshape(2, 3, 5)
  assert parallel.constrain(x, ('batch', 'frames', 'height')) is x
  mesh = jax.sharding.AbstractMesh(
    (1, 1, 2, 2, 1), parallel.AXES, axis_types=(jax.sharding.AxisType.Auto,) * 5
  )
  # 3 frames on a 2-way time axis: left whole rather than padded.
  assert parallel._fit(P(None, 'time', 'space'), (2, 3, 4), mesh) == P(None, None, 'space')


def test_upsample_nearest_is_jax_image_resize_nearest():
  from imagen_video_jax.models.unet import upsample_nearest

  x = jax.random.normal(jax.random.key(0), (2, 3, 4, 5, 6))
  np.testing.assert_array_equal(
    np.asarray(upsample_nearest(x)), np.asarray(jax.image.resize(x, (2, 3, 8, 10, 6), 'nearest'))
  )


def test_on_eight_fake_devices():
  if EIGHT:
    pytest.skip('already on 8 devices: the multidevice tests run directly')
  distributed_util.rerun_on_fake_devices(__file__, 'matches_one_device', passed=2)


@pytest.mark.slow
def test_the_train_program_runs_with_frames_and_rows_split(tmp_path):
  """`python -m imagen_video_jax.train` on a 2x2x2 (data, time, space) mesh of fake
  devices: trains, checkpoints and writes a sample video (~60 s)."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=8')
  workdir = tmp_path / 'run'
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'imagen_video_jax.train',
      '--config=configs/digits.py:stage=ssr,tiny=True',
      f'--workdir={workdir}',
      '--config.num_steps=3',
      '--config.log_every=1',
      '--config.data.batch_size=2',
      '--config.mesh.data=2',
      '--config.mesh.time=2',
      '--config.mesh.space=2',
      '--config.sample_every=3',
      '--config.sample.num=2',
      '--config.sample.steps=2',
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
    cwd=ROOT,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert 'step 3/3' in proc.stdout
  assert (workdir / 'checkpoints' / '3').is_dir()
  assert (workdir / 'samples' / 'step_00000003.gif').stat().st_size > 1000
