"""Tests of imagen_video_jax.parallel: meshes, rules, sharded init, multi-host start-up.

Tests marked `multidevice` need 8 devices. The main suite runs on one CPU device, so
`test_on_eight_fake_devices` re-runs this file's multidevice tests in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the flag must be set before jax is
imported, so it cannot be set here).
"""

import os
import socket
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagen_video_jax import parallel
from imagen_video_jax.models import t5
from imagen_video_jax.models.unet import LevelConfig, UNetConfig, VideoUNet, init_params

import distributed_util

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EIGHT = jax.device_count() >= 8
multidevice = pytest.mark.skipif(
  not EIGHT, reason='needs 8 devices (run by test_on_eight_fake_devices)'
)
P = jax.sharding.PartitionSpec


def _cfg():
  return UNetConfig(
    levels=(
      LevelConfig(64, 1, spatial_attention=True, temporal='attention', cross_attention=True),
    ),
    text_dim=16,
    emb_dim=32,
    head_dim=16,
    cond_channels=3,
    cond_augment=True,
  )


def _init_fn(cfg):
  return lambda k: init_params(cfg, k, frames=2, height=8, width=8)


# ---------------------------------------------------------------------------------
# Single device (the main suite).
# ---------------------------------------------------------------------------------
def test_make_mesh_single_device():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == parallel.AXES
  assert dict(mesh.shape) == {
    'data': jax.device_count(),
    'fsdp': 1,
    'time': 1,
    'space': 1,
    'tensor': 1,
  }
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize(
  'sizes, total, expected',
  [
    (dict(data=-1), 8, (8, 1, 1, 1, 1)),
    (dict(data=-1, fsdp=2, tensor=2), 8, (2, 2, 1, 1, 2)),
    (dict(data=2, fsdp=-1), 8, (2, 4, 1, 1, 1)),
    (dict(data=1, fsdp=1, tensor=-1), 4, (1, 1, 1, 1, 4)),
    (dict(data=2, fsdp=2, tensor=2), 8, (2, 2, 1, 1, 2)),
    (dict(data=2, time=-1, space=2), 16, (2, 1, 4, 2, 1)),
  ],
)
def test_mesh_sizes_fill(sizes, total, expected):
  assert parallel._resolve_sizes(sizes, total, 'm') == expected


@pytest.mark.parametrize(
  'sizes, total, match',
  [
    (dict(data=-1, fsdp=3), 8, 'do not divide 8'),
    (dict(data=2, fsdp=2, tensor=1), 8, 'needs 4 devices but there are 8'),
    (dict(data=-1, fsdp=-1), 8, 'at most one'),
    (dict(data=0), 8, 'positive or -1'),
  ],
)
def test_mesh_size_errors(sizes, total, match):
  with pytest.raises(ValueError, match=match):
    parallel._resolve_sizes(sizes, total, 'm')


def test_make_mesh_error_names_the_problem():
  with pytest.raises(ValueError, match=r'make_mesh: .*data\*fsdp\*time\*space\*tensor'):
    parallel.make_mesh(data=jax.device_count() + 1)


def test_hybrid_mesh_single_slice_and_errors():
  mesh = parallel.make_hybrid_mesh(ici={'data': -1}, dcn={})
  assert mesh.devices.shape == (jax.device_count(), 1, 1, 1, 1)
  with pytest.raises(ValueError, match='dcn'):  # CPU devices are all one slice
    parallel.make_hybrid_mesh(ici={'fsdp': -1}, dcn={'data': 2})
  with pytest.raises(ValueError, match='unknown axes'):
    parallel.make_hybrid_mesh(ici={'model': 2}, dcn={})
  assert parallel.mesh_from_config({'data': -1}).devices.shape == (jax.device_count(), 1, 1, 1, 1)


def test_rules_give_valid_specs_for_every_named_axis_combination():
  r = parallel.DEFAULT_RULES
  spec = lambda names: nn.logical_to_mesh_axes(names, r)
  assert spec((None, None, None, 'conv_in', 'conv_out')) == P(None, None, None, 'fsdp', 'tensor')
  assert spec(('embed', 'heads', 'kv')) == P('fsdp', 'tensor', None)
  assert spec(('heads', 'kv', 'embed')) == P('tensor', None, 'fsdp')
  assert spec(('embed', 'mlp')) == P('fsdp', 'tensor')
  assert spec(('mlp', 'embed')) == P('tensor', 'fsdp')
  assert spec(('vocab', 'embed')) == P('tensor', 'fsdp')
  assert spec(('heads', None)) == P('tensor', None)
  # Activations: batch takes data+fsdp, so embed is left replicated (a mesh axis is
  # used once per array); one example's frames and rows split over time and space.
  assert spec(('batch', 'frames', 'height', 'width', 'embed')) == P(
    ('data', 'fsdp'), 'time', 'space', None, None
  )
  # Temporal attention's rows: the pixels take both (rows major, as H is in H*W).
  assert spec(('batch', 'pixels', None, 'embed')) == P(
    ('data', 'fsdp'), ('space', 'time'), None, None
  )
  assert spec(('batch', None, 'embed')) == P(('data', 'fsdp'), None, None)


def _all_names(tree):
  names = set()
  for leaf in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)):
    names.update(n for n in leaf.names if n is not None)
  return names


def test_rules_cover_every_unet_and_t5_axis_name():
  ruled = {name for name, _ in parallel.DEFAULT_RULES}
  unet = jax.eval_shape(_init_fn(_cfg()), jax.random.key(0))
  t5_abstract = t5.abstract_params(t5.T5Config.from_name('tiny'))
  assert _all_names(unet) | _all_names(t5_abstract) <= ruled


def test_every_large_param_shards_on_a_model_parallel_axis():
  """On a (1, 4, 4) mesh-shaped check, every >=2-D param with a big axis is split."""

  # A fake mesh shape for _fit (divisibility only): use logical_sharding's spec logic.
  class _FakeMesh:
    shape = {'data': 2, 'fsdp': 4, 'tensor': 4}

  cfg = UNetConfig(
    levels=(
      LevelConfig(128, 1, spatial_attention=True, temporal='attention', cross_attention=True),
    ),
    text_dim=256,
    emb_dim=128,
  )
  boxed = jax.eval_shape(
    lambda k: init_params(cfg, k, frames=1, height=1, width=1), jax.random.key(0)
  )
  boxed = {'unet': boxed, 't5': t5.abstract_params(t5.T5Config.from_name('small'))}
  specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), parallel.DEFAULT_RULES)
  values = nn.unbox(boxed)
  unsharded = []
  for (path, spec), v in zip(
    jax.tree_util.tree_leaves_with_path(specs, is_leaf=lambda x: isinstance(x, P)),
    jax.tree.leaves(values),
  ):
    fitted = parallel._fit(spec, v.shape, _FakeMesh)
    if v.size >= 4096 and all(e is None for e in fitted):
      unsharded.append((jax.tree_util.keystr(path), v.shape, spec))
  # The only big unsharded params: kernels whose input is the 3(+3) image channels.
  assert all('conv_in' in p or 'rel_bias' in p for p, _, _ in unsharded), unsharded


def test_param_bytes_per_device_single_device():
  boxed = jax.eval_shape(_init_fn(_cfg()), jax.random.key(0))
  mesh = parallel.make_mesh()
  shardings = parallel.logical_shardings(boxed, mesh)
  total = sum(x.size * 4 for x in jax.tree.leaves(nn.unbox(boxed)))
  assert parallel.param_bytes_per_device(boxed, shardings) == total * 1  # one device: all of it


@pytest.mark.parametrize(
  'args, env, mode, kwargs',
  [
    ((), {}, 'single', {}),
    (
      ('10.0.0.1:1234', 4, 2),
      {},
      'explicit',
      dict(coordinator_address='10.0.0.1:1234', num_processes=4, process_id=2),
    ),
    (
      (),
      {'IVJ_COORDINATOR': 'h:1', 'IVJ_NUM_PROCESSES': '2', 'IVJ_PROCESS_ID': '1'},
      'explicit',
      dict(coordinator_address='h:1', num_processes=2, process_id=1),
    ),
    (('h:1', 1, 0), {}, 'single', {}),
    ((), {'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '16'}, 'slurm', {}),
    ((), {'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '1'}, 'single', {}),
    ((), {'OMPI_COMM_WORLD_SIZE': '4'}, 'mpi', {}),
    ((), {'TPU_WORKER_HOSTNAMES': 'a,b,c,d'}, 'tpu', {}),
    ((), {'TPU_WORKER_HOSTNAMES': 'localhost'}, 'single', {}),
    ((), {'IVJ_DISTRIBUTED': '1'}, 'tpu', {}),
    ((), {'IVJ_DISTRIBUTED': '0', 'SLURM_JOB_ID': '7', 'SLURM_NTASKS': '16'}, 'single', {}),
  ],
)
def test_plan_distributed(args, env, mode, kwargs):
  plan = parallel.plan_distributed(*args, env=env)
  assert (plan.mode, plan.kwargs) == (mode, kwargs)


@pytest.mark.parametrize(
  'args, env, match',
  [
    (('h:1',), {}, 'without num_processes'),
    (('h:1', 2, 2), {}, 'not in'),
    ((None, 2, 0), {}, 'without a coordinator'),
  ],
)
def test_plan_distributed_errors(args, env, match):
  with pytest.raises(ValueError, match=match):
    parallel.plan_distributed(*args, env=env)


def test_initialize_distributed_single_process_is_a_noop():
  plan = parallel.initialize_distributed()
  assert plan.mode == 'single' or jax.process_count() > 1


def test_param_bytes_per_device_on_an_abstract_pod():
  boxed = jax.eval_shape(_init_fn(_cfg()), jax.random.key(0))
  total = sum(x.size * 4 for x in jax.tree.leaves(nn.unbox(boxed)))
  mesh = parallel.abstract_mesh(64, data=8, fsdp=-1, tensor=2)
  assert dict(mesh.shape) == {'data': 8, 'fsdp': 4, 'time': 1, 'space': 1, 'tensor': 2}
  per_device = parallel.param_bytes_per_device(boxed, parallel.logical_shardings(boxed, mesh))
  assert total / 8.5 < per_device < total / 4


_DIST_SCRIPT = """
import sys, time
from imagen_video_jax import parallel
plan = parallel.initialize_distributed()
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
mesh = parallel.make_mesh(data=-1, fsdp=2)
print('RESULT', plan.mode, jax.process_index(), jax.process_count(), jax.local_device_count(),
      jax.device_count(), mesh.devices.shape, flush=True)
# A program whose collective spans both processes, reached 40 s later by process 1 (as
# when it compiles what process 0 read from the compilation cache): a CPU collective
# waits 30 s for its peers, so only a meeting after compiling lets it run.
x = jax.make_array_from_callback(
  (4,), NamedSharding(mesh, PartitionSpec(('data', 'fsdp'))),
  lambda index: np.arange(1, 5, dtype=np.float32)[index])
total = jax.jit(lambda a: a.sum(), out_shardings=NamedSharding(mesh, PartitionSpec()))
if jax.process_index() == 1:
  time.sleep(float(sys.argv[1]))
start = time.monotonic()
fn = parallel.compiled_together(total, x, name='sum')
print('SUM', float(fn(x)), round(time.monotonic() - start), flush=True)
"""
_SKEW_S = 40


@pytest.mark.multiprocess  # run alone: see tests/test_distributed_training.py
def test_two_processes_on_localhost_form_one_job(tmp_path):
  """Also when the coordinator's port is taken: distributed_util starts the job again.
  A process that compiles long after the other still meets it (parallel.compiled_together)."""
  script = tmp_path / 'dist.py'
  script.write_text(_DIST_SCRIPT)

  def env(i, coordinator):
    return dict(
      os.environ,
      IVJ_COORDINATOR=coordinator,
      IVJ_NUM_PROCESSES='2',
      IVJ_PROCESS_ID=str(i),
      JAX_PLATFORMS='cpu',
      XLA_FLAGS='--xla_force_host_platform_device_count=2',
      PYTHONPATH=ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''),
    )

  with socket.socket() as taken:  # bound without SO_REUSEPORT: the coordinator cannot bind
    taken.bind(('', 0))
    port = taken.getsockname()[1]
    with distributed_util.local_job(
      [sys.executable, str(script), str(_SKEW_S)],
      env,
      tmp_path / 'dist',
      cwd=ROOT,
      first_port=port,
    ) as job:
      outs = job.finish(timeout=120 + _SKEW_S)
  assert job.tries == 2 and job.port != port
  for i, out in enumerate(outs):
    assert f'RESULT explicit {i} 2 2 4 (2, 2, 1, 1, 1)' in out, out[-3000:]
    assert 'SUM 10.0' in out, out[-3000:]  # 1+2+3+4, one number per device
  waited = int(outs[0].split('SUM 10.0 ', 1)[1].split()[0])
  assert waited >= _SKEW_S - 10, waited  # process 0 waited for process 1 before running


# ---------------------------------------------------------------------------------
# Eight fake devices (run in a subprocess by test_on_eight_fake_devices).
# ---------------------------------------------------------------------------------
@multidevice
def test_mesh_shapes_on_eight():
  assert parallel.make_mesh(-1, 2, 2).devices.shape == (2, 2, 1, 1, 2)
  assert parallel.make_mesh(fsdp=8, data=1).devices.shape == (1, 8, 1, 1, 1)
  assert parallel.make_mesh(data=2, time=2, space=2).devices.shape == (2, 1, 2, 2, 1)
  assert parallel.make_mesh(devices=jax.devices()[:4], tensor=2).devices.shape == (2, 1, 1, 1, 2)
  with pytest.raises(ValueError, match='do not divide 8'):
    parallel.make_mesh(fsdp=3)
  hybrid = parallel.make_hybrid_mesh(ici={'data': 2, 'fsdp': -1}, dcn={'data': 1})
  assert hybrid.devices.shape == (2, 4, 1, 1, 1)
  assert parallel.mesh_from_config({'data': 2, 'fsdp': 2, 'tensor': 2}).devices.shape == (
    2,
    2,
    1,
    1,
    2,
  )
  assert parallel.mesh_from_config({'data': 2, 'time': 4}).devices.shape == (2, 1, 4, 1, 1)


@multidevice
def test_sharded_init_and_forward_match_single_device():
  cfg = _cfg()
  init_fn = _init_fn(cfg)
  mesh = parallel.make_mesh(2, 2, 2)
  key = jax.random.key(0)
  params, shardings = parallel.sharded_init(init_fn, key, mesh)

  # Really sharded: each device holds a quarter of a conv kernel and of a q kernel.
  conv = params['down0_block0']['res']['conv2']['kernel']  # [1,3,3,64,64]
  assert conv.sharding.spec == P(None, None, None, 'fsdp', 'tensor')
  assert {s.data.shape for s in conv.addressable_shards} == {(1, 3, 3, 32, 32)}
  q = params['down0_block0']['spatial_attn']['attn']['query']['kernel']  # [64, 4, 16]
  assert q.sharding.spec == P('fsdp', 'tensor', None)
  assert {s.data.shape for s in q.addressable_shards} == {(32, 2, 16)}
  conv_in = params['conv_in']['kernel']  # 6 input channels: fsdp (2) divides, tensor (2) too
  assert conv_in.sharding.spec == P(None, None, None, 'fsdp', 'tensor')

  ref = jax.device_get(nn.unbox(init_fn(key)))  # one device, same key
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), b, atol=1e-6), params, ref)

  full = sum(x.size * 4 for x in jax.tree.leaves(ref))
  per_device = parallel.param_bytes_per_device(params, shardings)
  assert full / 4.5 < per_device < full / 2  # ~1/4: everything big is fsdp x tensor split

  # Forward: random (non-zero) params, batch-sharded inputs == one device.
  leaves, treedef = jax.tree.flatten(ref)
  rng = np.random.default_rng(0)
  ref = treedef.unflatten([a + 0.05 * rng.standard_normal(a.shape).astype(a.dtype) for a in leaves])
  sharded = jax.device_put(ref, shardings)
  b, t = 4, 3
  ks = jax.random.split(jax.random.key(1), 5)
  inputs = (
    jax.random.normal(ks[0], (b, t, 8, 8, 3)),
    jax.random.normal(ks[1], (b,)),
    jax.random.normal(ks[2], (b, 5, 16)),
    jnp.arange(5)[None] < jnp.array([5, 3, 0, 2])[:, None],
    jnp.array([[0, 0, 0], [0, 1, 2], [0, 0, 1], [0, 0, 0]], jnp.int32),
    jax.random.normal(ks[3], (b, t, 8, 8, 3)),
    jax.random.normal(ks[4], (b,)),
  )
  model = VideoUNet(cfg)
  fwd = jax.jit(lambda p, *a: model.apply({'params': p}, *a))
  expected = np.asarray(fwd(ref, *inputs))
  assert np.abs(expected).max() > 1e-2
  with parallel.mesh_context(mesh):
    out = fwd(sharded, *jax.device_put(inputs, parallel.batch_sharding(mesh)))
  assert out.sharding.spec == P(('data', 'fsdp'))
  np.testing.assert_allclose(np.asarray(out), expected, atol=1e-5)


def test_on_eight_fake_devices():
  if EIGHT:
    pytest.skip('already on 8 devices: the multidevice tests run directly')
  distributed_util.rerun_on_fake_devices(__file__, 'on_eight or match_single_device', passed=2)
