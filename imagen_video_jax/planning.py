"""Memory planning: does a stage's training step fit a mesh? Abstract arrays only.

`plan_memory(config, mesh_sizes)` builds the training job's own train state and step
(`training.state.state_shardings`, `training.step.make_train_step`) from
`jax.ShapeDtypeStruct`s carrying their shardings, lowers and compiles the jitted step
for a mesh of fake CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``,
which must be set before jax starts its CPU backend: `python -m imagen_video_jax.plan`
does it), and reads XLA's compiled memory analysis (per device: the program is SPMD). Nothing of
the model is allocated: parameters, optimizer state, EMA and the batch exist only as
shapes.

Caveat: the memory analysis is the CPU backend's. It stands in for a TPU or GPU, whose
compilers fuse, schedule and (TPU) rematerialise differently; treat "fits" as an
estimate with the headroom in mind, and confirm with a real step on the target.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Mapping

# Named device memories (bytes) for tables and defaults.
DEVICES = {'tpu_v5p': 95e9, 'h100': 80e9}

_AXES = ('data', 'fsdp', 'tensor')


def parse_mesh(text: str) -> dict[str, int]:
  """'data:16,fsdp:16' -> {'data': 16, 'fsdp': 16, 'tensor': 1}; ValueError if malformed."""
  sizes = {a: 1 for a in _AXES}
  for part in filter(None, (p.strip() for p in (text or '').split(','))):
    m = re.fullmatch(r'(\w+)\s*[:=]\s*(\d+)', part)
    if not m or m.group(1) not in _AXES:
      raise ValueError(
        f'--mesh: bad entry {part!r}; use AXIS:SIZE with AXIS one of '
        f'{", ".join(_AXES)}, e.g. data:16,fsdp:16'
      )
    if int(m.group(2)) < 1:
      raise ValueError(f'--mesh: {m.group(1)} must be >= 1, got {m.group(2)}')
    sizes[m.group(1)] = int(m.group(2))
  return sizes


def num_devices(sizes: Mapping[str, int]) -> int:
  return math.prod(int(sizes.get(a, 1)) for a in _AXES)


def ensure_fake_devices(n: int, environ: dict | None = None) -> dict:
  """Sets XLA_FLAGS (and JAX_PLATFORMS=cpu) in `environ` for `n` fake CPU devices.

  Must run before jax initialises its backend. Replaces an existing
  device-count flag; keeps the other flags. Returns `environ`.
  """
  env = os.environ if environ is None else environ
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '', env.get('XLA_FLAGS', ''))
  extra = ''
  if '--xla_backend_optimization_level' not in flags:
    # LLVM codegen at -O0: the plan needs buffer assignment, not fast code (several x
    # faster compiles; HLO passes and the memory analysis are unchanged).
    extra = ' --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
  env['XLA_FLAGS'] = (f'{flags.strip()} --xla_force_host_platform_device_count={n}{extra}').strip()
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def devices_from_argv(argv) -> int:
  """The fake devices a plan command line needs: the largest of --mesh and --search
  (at least 8, the default mesh's)."""
  n = 8
  for i, a in enumerate(argv):
    for name in ('--mesh', '--search'):
      value = (
        a[len(name) + 1 :]
        if a.startswith(name + '=')
        else (argv[i + 1] if a == name and i + 1 < len(argv) else None)
      )
      if value is None:
        continue
      try:
        n = max(
          n,
          num_devices(parse_mesh(value))
          if name == '--mesh'
          else max(int(v) for v in value.split(',') if v.strip()),
        )
      except ValueError:
        pass  # the flag's own parser reports it
  return n


@dataclasses.dataclass
class MemoryPlan:
  stage: str
  mesh: dict
  devices: int
  batch_size: int
  param_count: int
  param_bytes: int  # all params, float32 master copy
  params_per_device: int  # bytes on the fullest device
  opt_state_per_device: int
  ema_per_device: int
  batch_per_device: int  # bytes of one batch's shard
  t5_per_device: int = 0  # frozen T5 params run in the step (text.source != 'cache')
  argument_bytes: int = 0  # XLA compiled memory analysis of the train step (per device)
  output_bytes: int = 0
  alias_bytes: int = 0
  temp_bytes: int = 0
  code_bytes: int = 0
  compile_seconds: float = 0.0
  compiled: bool = False

  @property
  def state_per_device(self) -> int:
    return self.params_per_device + self.opt_state_per_device + self.ema_per_device

  @property
  def peak_bytes(self) -> int:
    """Arguments + outputs not aliased to (donated) arguments + temporaries + code."""
    if not self.compiled:
      return self.state_per_device + self.batch_per_device + self.t5_per_device
    return (
      self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes
    )

  def fits(self, device_bytes: float) -> bool:
    return self.peak_bytes <= device_bytes


def _gb(b: float) -> str:
  return f'{b / 1e9:8.2f} GB'


def report(p: MemoryPlan, device_bytes: float | None = None) -> str:
  mesh = ','.join(f'{a}:{p.mesh[a]}' for a in _AXES)
  lines = [
    f'stage {p.stage}: mesh {mesh} ({p.devices} devices), global batch {p.batch_size} '
    f'({p.batch_size / p.devices:g} per device)',
    f'parameters            {p.param_count:,} ({p.param_count / 1e9:.3f}B), '
    f'{_gb(p.param_bytes).strip()} in float32',
    'per device (fullest device, from the shardings):',
    f'  params              {_gb(p.params_per_device)}',
    f'  optimizer state     {_gb(p.opt_state_per_device)}',
    f'  EMA params          {_gb(p.ema_per_device)}',
    f'  batch               {_gb(p.batch_per_device)}',
  ]
  if p.t5_per_device:
    lines.append(f'  frozen T5 params    {_gb(p.t5_per_device)}   (replicated)')
  if p.compiled:
    lines += [
      'XLA compiled memory analysis of the train step, per device (CPU backend standing '
      'in for TPU/GPU: an estimate):',
      f'  arguments           {_gb(p.argument_bytes)}',
      f'  outputs             {_gb(p.output_bytes)}',
      f'  aliased (donated)   {_gb(p.alias_bytes)}',
      f'  temporaries         {_gb(p.temp_bytes)}',
      f'  generated code      {_gb(p.code_bytes)}',
      f'  peak estimate       {_gb(p.peak_bytes)}   (args + outputs - aliased + temp + '
      f'code; compiled in {p.compile_seconds:.0f} s)',
    ]
  else:
    lines.append(f'  state + batch       {_gb(p.peak_bytes)}   (not compiled: no activations)')
  if device_bytes:
    verdict = 'FITS' if p.fits(device_bytes) else 'DOES NOT FIT'
    lines.append(
      f'{verdict} in {device_bytes / 1e9:g} GB per device '
      f'({100 * p.peak_bytes / device_bytes:.0f}% used)'
    )
  return '\n'.join(lines)


def _shard_bytes(abstract: Any, shardings: Any) -> int:
  import jax
  import numpy as np

  leaves = jax.tree.leaves(abstract)
  shards = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  assert len(leaves) == len(shards), (len(leaves), len(shards))
  return sum(
    math.prod(s.shard_shape(tuple(v.shape))) * np.dtype(v.dtype).itemsize
    for v, s in zip(leaves, shards)
  )


def abstract_batch(config, model_cfg, spec, sharding) -> dict:
  """The batch `make_pipeline` yields for this config (crop-sized with `data.crop`), as
  sharded ShapeDtypeStructs."""
  import jax
  import jax.numpy as jnp

  from imagen_video_jax.training import loop as loop_lib

  b, (t, h, w) = int(config.data.batch_size), loop_lib.train_clip_size(config, spec)
  sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
  batch = {'video': sds((b, t, h, w, 3), jnp.float32), 'frame_ids': sds((b, t), jnp.int32)}
  if model_cfg.cond_channels:
    batch['cond'] = sds((b, t, h, w, model_cfg.cond_channels), jnp.float32)
  if model_cfg.text_dim is not None:
    length = int(config.text.max_length)
    batch['text_mask'] = sds((b, t, length), jnp.bool_)
    if config.text.source == 'cache':  # cached T5 embeddings are bfloat16
      batch['text_emb'] = sds((b, t, length, model_cfg.text_dim), jnp.bfloat16)
    else:
      batch['tokens'] = sds((b, t, length), jnp.int32)
  return batch


def plan_memory(
  config, mesh_sizes: Mapping[str, int], *, compile: bool = True, devices=None
) -> MemoryPlan:
  """Plans one stage's training step on a mesh of (fake) devices; allocates no model.

  `mesh_sizes` e.g. {'data': 16, 'fsdp': 16}; the first prod(sizes) of `devices`
  (default jax.devices(): set XLA_FLAGS for fake CPU devices first) form the mesh.
  compile=False: only the shardings' arithmetic (fast), no activations.
  Text: as the config says: cached embeddings in the batch (the paper configs), or
  token ids and the frozen T5 (replicated, as the job places it) run in the step.
  """
  import time

  import jax
  from jax.sharding import NamedSharding, PartitionSpec

  from imagen_video_jax import parallel
  from imagen_video_jax.models import unet as unet_lib
  from imagen_video_jax.training import loop as loop_lib
  from imagen_video_jax.training import state as state_lib
  from imagen_video_jax.training import step as step_lib

  jax.config.update('jax_threefry_partitionable', True)
  stage = loop_lib.validate(config)
  model_cfg, spec = stage.unet, stage.spec
  sizes = {a: int(mesh_sizes.get(a, 1)) for a in _AXES}
  n = num_devices(sizes)
  devices = list(jax.devices() if devices is None else devices)
  if len(devices) < n:
    raise ValueError(
      f'mesh {sizes} needs {n} devices; this process has {len(devices)}. '
      f'Set XLA_FLAGS=--xla_force_host_platform_device_count={n} before jax '
      'starts (python -m imagen_video_jax.plan does).'
    )
  mesh = parallel.make_mesh(**sizes, devices=devices[:n])
  rules = parallel.DEFAULT_RULES
  batch_size = int(config.data.batch_size)
  if batch_size % (sizes['data'] * sizes['fsdp']):
    raise ValueError(
      f'data.batch_size {batch_size} is not divisible by data*fsdp = '
      f'{sizes["data"] * sizes["fsdp"]}'
    )

  model = unet_lib.VideoUNet(model_cfg)
  tx, schedule = state_lib.make_optimizer(config.optim)
  text_len = int(config.text.max_length)
  boxed_init = unet_lib.init_fn(
    model_cfg, frames=spec.frames, height=spec.height, width=spec.width, text_len=text_len
  )
  abstract, shardings = state_lib.state_shardings(boxed_init, tx, mesh, rules)

  param_leaves = jax.tree.leaves(abstract.params)
  param_count = sum(math.prod(p.shape) for p in param_leaves)
  param_bytes = sum(math.prod(p.shape) * p.dtype.itemsize for p in param_leaves)
  batch_sh = parallel.batch_sharding(mesh)
  batch = abstract_batch(config, model_cfg, spec, batch_sh)
  plan = MemoryPlan(
    stage=str(config.get('stage', config.get('name', '?'))),
    mesh=sizes,
    devices=n,
    batch_size=batch_size,
    param_count=param_count,
    param_bytes=param_bytes,
    params_per_device=_shard_bytes(abstract.params, shardings.params),
    opt_state_per_device=_shard_bytes(abstract.opt_state, shardings.opt_state),
    ema_per_device=_shard_bytes(abstract.ema_params, shardings.ema_params),
    batch_per_device=_shard_bytes(batch, jax.tree.map(lambda x: x.sharding, batch)),
  )
  replicated = NamedSharding(mesh, PartitionSpec())
  t5_model = t5_params = None
  if model_cfg.text_dim is not None and config.text.source != 'cache':
    from imagen_video_jax.models import t5 as t5_lib

    t5_cfg = stage.text
    t5_model = t5_lib.T5Encoder(t5_cfg)
    t5_params = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
      parallel._values(t5_lib.abstract_params(t5_cfg)),
    )
    plan.t5_per_device = sum(
      math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(t5_params)
    )
  if not compile:
    return plan

  train_key = jax.random.key(int(config.seed))
  t0 = time.perf_counter()
  with parallel.mesh_context(
    mesh, rules, constrain_activations=bool(config.mesh.get('constrain_activations', False))
  ):
    fn = step_lib.make_train_step(config, model, t5_model, tx, schedule, train_key)
    compiled = (
      jax.jit(fn, out_shardings=(shardings, replicated), donate_argnums=0)
      .lower(abstract, batch, t5_params)
      .compile()
    )
  plan.compile_seconds = time.perf_counter() - t0
  ma = compiled.memory_analysis()
  plan.argument_bytes = int(ma.argument_size_in_bytes)
  plan.output_bytes = int(ma.output_size_in_bytes)
  plan.alias_bytes = int(ma.alias_size_in_bytes)
  plan.temp_bytes = int(ma.temp_size_in_bytes)
  plan.code_bytes = int(ma.generated_code_size_in_bytes)
  plan.compiled = True
  return plan


def to_json(p: MemoryPlan, device_bytes: float | None = None) -> str:
  import json

  d = dataclasses.asdict(p)
  d.update(peak_bytes=p.peak_bytes, state_per_device=p.state_per_device)
  if device_bytes:
    d.update(device_bytes=device_bytes, fits=p.fits(device_bytes))
  return json.dumps(d)


def smallest_fitting(config, candidates, device_bytes: float, **kw):
  """The first mesh in `candidates` (ascending size) whose plan fits; (mesh, plans tried).

  Assumes fitting is monotone in the device count, so it stops at the first fit.
  """
  tried = []
  for sizes in candidates:
    p = plan_memory(config, sizes, **kw)
    tried.append(p)
    if p.fits(device_bytes):
      return sizes, tried
  return None, tried
