"""Memory planning: does a stage's training step fit a mesh? Abstract arrays only.

`plan_memory(config, mesh_sizes)` builds the training job's own train state and step
(`training.state.state_shardings`, `training.step.make_train_step`) from
`jax.ShapeDtypeStruct`s carrying their shardings, lowers and compiles the jitted step
for a mesh of fake CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=N``,
which must be set before jax starts its CPU backend: `python -m imagen_video_jax.plan`
does it), and reads XLA's compiled memory analysis (per device: the program is SPMD). Nothing of
the model is allocated: parameters, optimizer state, EMA and the batch exist only as
shapes.

The mesh may split one example's frames (``time``) and rows (``space``) over devices
(activation sharding, imagen_video_jax.parallel), and the stage may train on crops
(``data.crop``); `search` tries meshes and crops in order and returns the first plan that
fits. The ``data`` axis only replicates the state and splits the batch, so a plan compiles
one data-parallel group (``data:1`` and ``batch / data`` examples): every device of the
full mesh holds what a device of that group holds (the gradient all-reduce over ``data``
adds no buffers beyond the gradients the group already holds). Fake devices are then
``fsdp * time * space * tensor``, not the whole pod.

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

# The mesh axes, as imagen_video_jax.parallel.AXES (this module imports no jax: the plan
# program sets XLA_FLAGS first; tests/test_plan.py checks the two agree).
_AXES = ('data', 'fsdp', 'time', 'space', 'tensor')


def parse_mesh(text: str) -> dict[str, int]:
  """'data:16,fsdp:16' -> {'data': 16, 'fsdp': 16, 'time': 1, ...}; ValueError if malformed."""
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


def compiled_devices(sizes: Mapping[str, int]) -> int:
  """The fake devices a plan compiles on: one data-parallel group (all axes but data)."""
  return num_devices({**sizes, 'data': 1})


def parse_crop(text: str) -> dict[str, int] | None:
  """'full' -> None (the config's own crop); 'FRAMESxHxW' (0: the stage's size on that
  axis) -> {'frames': .., 'height': .., 'width': ..}; ValueError if malformed."""
  text = (text or '').strip()
  if text in ('', 'config'):
    return None
  if text == 'full':
    return dict(frames=0, height=0, width=0)
  m = re.fullmatch(r'(\d+)x(\d+)x(\d+)', text)
  if not m:
    raise ValueError(
      f"--crops: bad entry {text!r}; use FRAMESxHEIGHTxWIDTH (0 = the stage's size), "
      "'full' or 'config', e.g. 0x192x320"
    )
  return dict(zip(('frames', 'height', 'width'), map(int, m.groups())))


def parse_search(text: str) -> list[dict[str, int]]:
  """--search: 'N,M,..' (pure FSDP device counts) or meshes separated by ';'
  ('fsdp:256;fsdp:256,time:2'); ValueError if malformed."""
  text = (text or '').strip()
  if ':' in text:
    return [parse_mesh(m) for m in text.split(';') if m.strip()]
  try:
    return [parse_mesh(f'fsdp:{int(n)}') for n in text.split(',') if n.strip()]
  except ValueError:
    raise ValueError(
      f'--search: {text!r} is neither device counts (8,16,32) nor meshes (fsdp:256;fsdp:256,time:2)'
    ) from None


def ensure_fake_devices(n: int, environ: dict | None = None) -> dict:
  """Sets XLA_FLAGS (and JAX_PLATFORMS=cpu) in `environ` for `n` fake CPU devices.

  Must run before jax initialises its backend. Replaces an existing
  device-count flag; keeps the other flags. Returns `environ`.
  """
  env = os.environ if environ is None else environ
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '', env.get('XLA_FLAGS', ''))
  # The package's own CPU default (imagen_video_jax._xla_cpu, set on import) is not for
  # fake-device meshes: sharded programs failed to compile with it. The user's is kept.
  from imagen_video_jax import _xla_cpu

  if _xla_cpu.applied:
    flags = flags.replace(f'--{_xla_cpu.OPTION}={_xla_cpu.VALUE}', '')
  extra = ''
  if '--xla_backend_optimization_level' not in flags:
    # LLVM codegen at -O0: the plan needs buffer assignment, not fast code (several x
    # faster compiles; HLO passes and the memory analysis are unchanged).
    extra = ' --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'
  env['XLA_FLAGS'] = (f'{flags.strip()} --xla_force_host_platform_device_count={n}{extra}').strip()
  env['JAX_PLATFORMS'] = 'cpu'
  return env


def devices_from_argv(argv) -> int:
  """The fake devices a plan command line needs: the most any mesh of --mesh or --search
  compiles on (`compiled_devices`; the whole mesh with --sample; at least 8, the default
  mesh's)."""
  n = 8
  count = num_devices if any(a in ('--sample', '--sample=true') for a in argv) else compiled_devices
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
        meshes = [parse_mesh(value)] if name == '--mesh' else parse_search(value)
        n = max([n] + [count(m) for m in meshes])
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
  clip: tuple = ()  # (frames, height, width) the train step sees (a crop, or the stage's)
  crop: bool = False  # whether `clip` is a crop of the stage's size
  kind: str = 'train'  # 'train': the train step; 'sample': the sampler (plan_sampling)
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


def mesh_text(sizes: Mapping[str, int]) -> str:
  """{'fsdp': 256, 'time': 4, ...} -> 'fsdp:256,time:4' (axes of size 1 left out)."""
  return ','.join(f'{a}:{sizes[a]}' for a in _AXES if sizes.get(a, 1) > 1) or 'one device'


def _gb(b: float) -> str:
  return f'{b / 1e9:8.2f} GB'


def report(p: MemoryPlan, device_bytes: float | None = None) -> str:
  mesh = mesh_text(p.mesh)
  split = p.mesh.get('time', 1) * p.mesh.get('space', 1)
  per_group = p.batch_size / (p.mesh.get('data', 1) * p.mesh.get('fsdp', 1))
  clip = 'x'.join(map(str, p.clip))
  train = p.kind == 'train'
  lines = [
    f'stage {p.stage}: mesh {mesh} ({p.devices} devices), '
    + (f'global batch {p.batch_size} ' if train else f'sampling {p.batch_size} clip(s) ')
    + f'({per_group:g} per data x fsdp shard'
    + (f', each split over {split} devices' if split > 1 else '')
    + f'), clips {clip}'
    + (' (a crop; sampling is full size)' if p.crop else ''),
    f'parameters            {p.param_count:,} ({p.param_count / 1e9:.3f}B), '
    f'{_gb(p.param_bytes).strip()} in float32',
    'per device (fullest device, from the shardings):',
    f'  params              {_gb(p.params_per_device)}',
  ]
  if train:
    lines += [
      f'  optimizer state     {_gb(p.opt_state_per_device)}',
      f'  EMA params          {_gb(p.ema_per_device)}',
    ]
  lines.append(f'  {"batch" if train else "inputs":20s}{_gb(p.batch_per_device)}')
  if p.t5_per_device:
    lines.append(f'  frozen T5 params    {_gb(p.t5_per_device)}   (replicated)')
  if p.compiled:
    group = compiled_devices(p.mesh) if train else p.devices
    lines += [
      f'XLA compiled memory analysis of the {"train step" if train else "sampler"}, per '
      'device (CPU backend standing in for TPU/GPU: an estimate'
      + (f'; compiled for one data-parallel group of {group} devices' if group < p.devices else '')
      + '):',
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


def abstract_batch(config, model_cfg, spec, sharding, batch_size: int | None = None) -> dict:
  """The batch `make_pipeline` yields for this config (crop-sized with `data.crop`), as
  sharded ShapeDtypeStructs."""
  import jax
  import jax.numpy as jnp

  from imagen_video_jax.training import loop as loop_lib

  b = int(config.data.batch_size if batch_size is None else batch_size)
  t, h, w = loop_lib.train_clip_size(config, spec)
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


def _compile_mesh(sizes: Mapping[str, int], devices, what: str):
  """The mesh of `sizes` over the first of `devices` (default: jax's); ValueError naming
  how to get enough fake devices when there are too few."""
  import jax

  from imagen_video_jax import parallel

  n = num_devices(sizes)
  devices = list(jax.devices() if devices is None else devices)
  if len(devices) < n:
    raise ValueError(
      f'{what} compiles on {n} devices; this process has {len(devices)}. Set '
      f'XLA_FLAGS=--xla_force_host_platform_device_count={n} before jax starts '
      '(python -m imagen_video_jax.plan does).'
    )
  return parallel.make_mesh(**sizes, devices=devices[:n])


def _with_analysis(plan: MemoryPlan, compiled, seconds: float) -> MemoryPlan:
  """`plan` with XLA's compiled memory analysis of `compiled` and its compile time."""
  ma = compiled.memory_analysis()
  plan.argument_bytes = int(ma.argument_size_in_bytes)
  plan.output_bytes = int(ma.output_size_in_bytes)
  plan.alias_bytes = int(ma.alias_size_in_bytes)
  plan.temp_bytes = int(ma.temp_size_in_bytes)
  plan.code_bytes = int(ma.generated_code_size_in_bytes)
  plan.compile_seconds = seconds
  plan.compiled = True
  return plan


def plan_memory(
  config,
  mesh_sizes: Mapping[str, int],
  *,
  compile: bool = True,
  devices=None,
  crop: Mapping[str, int] | None = None,
) -> MemoryPlan:
  """Plans one stage's training step on a mesh of (fake) devices; allocates no model.

  `mesh_sizes` e.g. {'data': 16, 'fsdp': 16, 'time': 2}; the step is compiled for one
  data-parallel group (every axis but ``data``, and ``batch / data`` examples; see the
  module docstring) on the first `compiled_devices(mesh_sizes)` of `devices` (default
  jax.devices(): set XLA_FLAGS for fake CPU devices first).
  crop: {'frames', 'height', 'width'} in place of the config's `data.crop` (None: the
  config's). compile=False: only the shardings' arithmetic (fast), no activations.
  Text: as the config says: cached embeddings in the batch (the paper configs), or
  token ids and the frozen T5 (replicated, as the job places it) run in the step.
  """
  import time

  import jax
  import ml_collections
  from jax.sharding import NamedSharding, PartitionSpec

  from imagen_video_jax import parallel
  from imagen_video_jax.models import unet as unet_lib
  from imagen_video_jax.training import loop as loop_lib
  from imagen_video_jax.training import state as state_lib
  from imagen_video_jax.training import step as step_lib

  jax.config.update('jax_threefry_partitionable', True)
  if crop is not None:
    config = ml_collections.ConfigDict(config.to_dict())
    config.data.crop = ml_collections.ConfigDict(dict(crop))
  stage = loop_lib.validate(config)
  model_cfg, spec = stage.unet, stage.spec
  clip = loop_lib.train_clip_size(config, spec)
  sizes = {a: int(mesh_sizes.get(a, 1)) for a in _AXES}
  n = num_devices(sizes)
  mesh = _compile_mesh({**sizes, 'data': 1}, devices, f'mesh {sizes} (one data-parallel group)')
  rules = parallel.DEFAULT_RULES
  batch_size = int(config.data.batch_size)
  if batch_size % (sizes['data'] * sizes['fsdp']):
    raise ValueError(
      f'data.batch_size {batch_size} is not divisible by data*fsdp = '
      f'{sizes["data"] * sizes["fsdp"]}'
    )
  problems = loop_lib.split_problems(sizes, clip)
  if problems:
    raise ValueError('; '.join(problems))

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
  batch = abstract_batch(config, model_cfg, spec, batch_sh, batch_size // sizes['data'])
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
    clip=tuple(clip),
    crop=tuple(clip) != (spec.frames, spec.height, spec.width),
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
  return _with_analysis(plan, compiled, time.perf_counter() - t0)


def plan_sampling(
  config, mesh_sizes: Mapping[str, int], *, num: int = 1, devices=None
) -> MemoryPlan:
  """Plans sampling `num` full-size clips of a stage (its configured sampler, guided when
  it reads text) on a mesh of (fake) devices: the EMA weights as the train state shards
  them, the inputs the cascade passes (text embeddings; the video below for an SR
  stage). Sampling is one forward pass per step, but at the stage's full size, crops or
  not: a clip too large for one device is split over ``time`` and ``space`` as in
  training. The whole mesh is compiled (no data-parallel folding)."""
  import time

  import jax
  import jax.numpy as jnp

  from imagen_video_jax import parallel, sampling
  from imagen_video_jax.models import unet as unet_lib
  from imagen_video_jax.training import loop as loop_lib

  jax.config.update('jax_threefry_partitionable', True)
  stage = loop_lib.validate(config)
  spec, model_cfg = stage.spec, stage.unet
  sizes = {a: int(mesh_sizes.get(a, 1)) for a in _AXES}
  n = num_devices(sizes)
  if num % (sizes['data'] * sizes['fsdp']):
    raise ValueError(
      f'{num} clips are not divisible by data*fsdp = {sizes["data"] * sizes["fsdp"]}'
    )
  mesh = _compile_mesh(sizes, devices, f'mesh {sizes}')
  text_len = int(config.text.max_length)
  boxed = unet_lib.init_fn(
    model_cfg, frames=spec.frames, height=spec.height, width=spec.width, text_len=text_len
  )
  abstract = jax.eval_shape(boxed, jax.random.key(0))
  shardings = parallel.logical_shardings(abstract, mesh)
  params = jax.tree.map(
    lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
    parallel._values(abstract),
    shardings,
  )
  sds = lambda shape, dtype: jax.ShapeDtypeStruct(
    shape, dtype, sharding=parallel.batch_sharding(mesh)
  )
  inputs = {}
  if model_cfg.text_dim is not None:
    inputs['text_emb'] = sds((num, text_len, model_cfg.text_dim), jnp.float32)
    inputs['text_mask'] = sds((num, text_len), jnp.bool_)
  if spec.is_sr:
    inputs['low'] = sds((num, spec.cond_frames, spec.cond_height, spec.cond_width, 3), jnp.float32)
  leaves = jax.tree.leaves(params)
  plan = MemoryPlan(
    stage=str(config.get('stage', config.get('name', '?'))),
    mesh=sizes,
    devices=n,
    batch_size=num,
    param_count=sum(math.prod(x.shape) for x in leaves),
    param_bytes=sum(math.prod(x.shape) * x.dtype.itemsize for x in leaves),
    params_per_device=_shard_bytes(params, shardings),
    opt_state_per_device=0,
    ema_per_device=0,
    batch_per_device=_shard_bytes(inputs, jax.tree.map(lambda x: x.sharding, inputs)),
    clip=(spec.frames, spec.height, spec.width),
    kind='sample',
  )
  t0 = time.perf_counter()
  sample = lambda p, kw: sampling.sample_stage(stage, p, jax.random.key(0), num, **kw)
  with parallel.mesh_context(mesh, constrain_activations=True):
    compiled = jax.jit(sample).lower(params, inputs).compile()
  return _with_analysis(plan, compiled, time.perf_counter() - t0)


def to_json(p: MemoryPlan, device_bytes: float | None = None) -> str:
  import json

  d = dataclasses.asdict(p)
  d.update(peak_bytes=p.peak_bytes, state_per_device=p.state_per_device)
  if device_bytes:
    d.update(device_bytes=device_bytes, fits=p.fits(device_bytes))
  return json.dumps(d)


def search(config, candidates, device_bytes: float, crops=(None,), **kw):
  """The first plan that fits: each crop of `crops` in order (None: the config's), each
  mesh of `candidates` in order. Returns (the fitting plan or None, every plan tried).

  Assumes fitting is monotone along `candidates` (put them in ascending memory order):
  it moves to the next crop at the first fit, and stops there.
  """
  tried = []
  for crop in crops:
    for sizes in candidates:
      p = plan_memory(config, sizes, crop=crop, **kw)
      tried.append(p)
      if p.fits(device_bytes):
        return p, tried
  return None, tried


def smallest_fitting(config, candidates, device_bytes: float, **kw):
  """The first mesh in `candidates` (ascending size) whose plan fits; (mesh, plans tried).
  `search` with the config's own crop."""
  p, tried = search(config, candidates, device_bytes, **kw)
  return (p.mesh if p else None), tried
