"""Scale-out: the device mesh, logical-axis rules, sharded init, multi-host start-up.

One mesh with axes ``('data', 'fsdp', 'time', 'space', 'tensor')`` serves every job, from
one CPU to a TPU pod (docs/design.md, 'Scale-out'; docs/scaling.md):

* ``data``   pure data parallelism: params replicated, the batch split;
* ``fsdp``   the batch is split here too, and params are split over their ``embed`` /
             ``conv_in`` axis (ZeRO-3 / FSDP: gathered per layer by XLA);
* ``time``   one example's frames are split (activation sharding: a clip too large for
             one device is spread over several);
* ``space``  one example's rows (height) are split, likewise;
* ``tensor`` Megatron-style: ``mlp``, ``heads``, ``conv_out`` and ``vocab`` split.

``time`` and ``space`` split activations only (params are replicated along them). The
U-Net's convolutions over a split axis exchange halos (GSPMD), per-frame GroupNorm sums
its statistics across the ``space`` devices, spatial attention gathers a frame's rows,
and temporal attention swaps the split from frames to pixels for its attention (an
all-to-all, as in sequence-parallel attention): every result is the one-device result.

Models name their parameter and activation axes logically (``nn.with_logical_partitioning``,
``nn.with_logical_constraint``); `DEFAULT_RULES` maps those names onto the mesh. Typical use:

    mesh = parallel.make_mesh(data=-1, fsdp=4)
    params, shardings = parallel.sharded_init(
        lambda k: unet.init_params(cfg, k, frames=16, height=24, width=40), key, mesh)
    x = jax.device_put(x, parallel.batch_sharding(mesh))
    with parallel.mesh_context(mesh):   # the rules (and optionally the mesh) while tracing
      out = jax.jit(model.apply)({'params': params}, x, ...)

Rules are a plain tuple of ``(logical_name, mesh_axes)`` pairs in order of priority (Flax
semantics): an array's dimension takes the first rule whose mesh axes are still free for
that array, so a mesh axis is used at most once per array. Activations are named
``('batch', 'frames', 'height', 'width', 'embed')``: ``batch`` takes ``('data', 'fsdp')``
first, so ``embed`` finds ``fsdp`` taken and stays replicated -- activations are
batch-sharded (and split over ``time`` and ``space``), params are FSDP-sharded, from one
rule set. Activation constraints apply only under `mesh_context(...,
constrain_activations=True)`: without them XLA would keep a whole example per device. A dimension that a mesh axis does not divide (a 3-channel
input conv, 5 heads on a 2-way tensor axis) is left replicated on that mesh axis instead of
padded, so any config runs on any mesh.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

log = logging.getLogger(__name__)

AXES = ('data', 'fsdp', 'time', 'space', 'tensor')
BATCH_AXES = ('data', 'fsdp')

# Logical axis -> mesh axes, in order of priority. Covers every name the U-Net
# (models/unet.py, layers.py, attention.py) and the T5 encoder (models/t5.py) use.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
  # activations
  ('batch', BATCH_AXES),
  ('frames', 'time'),
  ('height', 'space'),
  ('width', None),
  # temporal attention's rows [B, H*W, T, C]: the pixels take both activation axes, so
  # that the attention over T runs whole on each device (models/attention.py)
  ('pixels', ('space', 'time')),
  # text cross-attention's queries when one caption serves all frames: [B, 1, T*H*W, C]
  ('queries', ('time', 'space')),
  ('length', None),
  # parameters: FSDP on the model width, tensor parallel on the "fan-out" axes
  ('embed', 'fsdp'),
  ('conv_in', 'fsdp'),
  ('mlp', 'tensor'),
  ('heads', 'tensor'),
  ('conv_out', 'tensor'),
  ('vocab', 'tensor'),
  ('kv', None),
  ('layers', None),  # the stacked blocks of UNetConfig.scan_blocks
)

LogicalRules = Sequence[tuple[str, Any]]


# ---------------------------------------------------------------------------------
# Meshes.
# ---------------------------------------------------------------------------------
def _resolve_sizes(sizes: Mapping[str, int], total: int, what: str) -> tuple[int, ...]:
  """Fills the one -1 (if any) so that the product is `total`; raises a clear ValueError."""
  shape = [int(sizes.get(a, 1)) for a in AXES]
  unknown = [a for a, s in zip(AXES, shape) if s == -1]
  bad = [f'{a}={s}' for a, s in zip(AXES, shape) if s == 0 or s < -1]
  if bad:
    raise ValueError(f'{what}: mesh axis sizes must be positive or -1 (fill); got {", ".join(bad)}')
  if len(unknown) > 1:
    raise ValueError(f'{what}: at most one mesh axis may be -1 (fill); got -1 for {unknown}')
  known = math.prod(s for s in shape if s != -1)
  if unknown:
    if total % known:
      raise ValueError(
        f'{what}: {total} devices cannot be split into {_fmt(shape)}: the fixed axes '
        f'({known} devices) do not divide {total}. Choose sizes whose product divides {total}.'
      )
    shape[AXES.index(unknown[0])] = total // known
  elif known != total:
    raise ValueError(
      f'{what}: mesh {_fmt(shape)} needs {known} devices but there are {total}. '
      f'Make {"*".join(AXES)} equal {total}, or set one axis to -1 to fill.'
    )
  return tuple(shape)


def _fmt(shape: Sequence[int]) -> str:
  return ' x '.join(f'{a}={s}' for a, s in zip(AXES, shape))


def make_mesh(
  data: int = -1,
  fsdp: int = 1,
  tensor: int = 1,
  devices: Sequence[Any] | None = None,
  *,
  time: int = 1,
  space: int = 1,
) -> Mesh:
  """A mesh with the axes `AXES` over `devices` (default: all), AxisType.Auto.

  One size may be -1: it takes the devices the others leave. Raises ValueError when
  the sizes do not fit the device count.
  """
  devices = list(jax.devices() if devices is None else devices)
  sizes = dict(data=data, fsdp=fsdp, time=time, space=space, tensor=tensor)
  shape = _resolve_sizes(sizes, len(devices), 'make_mesh')
  axis_types = (AxisType.Auto,) * len(AXES)
  try:  # topology-aware device order on TPU/GPU
    return jax.make_mesh(shape, AXES, axis_types=axis_types, devices=devices)
  except (ValueError, NotImplementedError, AssertionError) as e:  # unusual subsets of devices
    log.info('jax.make_mesh failed (%s); using devices in the given order', e)
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), AXES, axis_types=axis_types)


def make_hybrid_mesh(
  ici: Mapping[str, int], dcn: Mapping[str, int], devices: Sequence[Any] | None = None
) -> Mesh:
  """A multi-slice mesh: `ici` sizes within a slice (fast interconnect), `dcn` across slices.

  Each axis' size is ici[axis] * dcn[axis] (missing axes: 1); one -1 is allowed in each
  dict (ici: fills the devices of one slice; dcn: fills the number of slices). Typical:
  ``make_hybrid_mesh(ici={'fsdp': -1}, dcn={'data': -1})`` -- FSDP inside each slice,
  data parallel across slices, so only gradient all-reduces cross the slower DCN.
  """
  for d, name in ((ici, 'ici'), (dcn, 'dcn')):
    unknown = set(d) - set(AXES)
    if unknown:
      raise ValueError(f'make_hybrid_mesh: {name} names unknown axes {sorted(unknown)}; use {AXES}')
  devices = list(jax.devices() if devices is None else devices)
  num_slices = len({getattr(d, 'slice_index', 0) for d in devices})
  dcn_shape = _resolve_sizes(dcn, num_slices, 'make_hybrid_mesh (dcn, across slices)')
  ici_shape = _resolve_sizes(
    ici, len(devices) // num_slices, 'make_hybrid_mesh (ici, devices per slice)'
  )
  axis_types = (AxisType.Auto,) * len(AXES)
  if num_slices == 1:  # nothing crosses DCN: the ordinary mesh
    return make_mesh(**dict(zip(AXES, ici_shape)), devices=devices)
  from jax.experimental import mesh_utils

  arr = mesh_utils.create_hybrid_device_mesh(
    ici_shape, dcn_shape, devices, allow_split_physical_axes=True
  )
  return Mesh(arr, AXES, axis_types=axis_types)


def mesh_from_config(cfg: Mapping[str, Any] | None, devices: Sequence[Any] | None = None) -> Mesh:
  """Builds the mesh a config's ``mesh`` section asks for.

  Keys: the axes of `AXES` (``data`` defaults to -1, the others to 1); optionally
  ``dcn_data``, ``dcn_fsdp``, ... for multi-slice (then the plain keys are per slice).
  """
  cfg = dict(cfg or {})
  ici = {a: int(cfg.get(a, -1 if a == 'data' else 1)) for a in AXES}
  dcn = {a: int(cfg[f'dcn_{a}']) for a in AXES if f'dcn_{a}' in cfg}
  if any(v != 1 for v in dcn.values()):
    return make_hybrid_mesh(ici, dcn, devices)
  return make_mesh(**ici, devices=devices)


def abstract_mesh(
  num_devices: int, data: int = -1, fsdp: int = 1, tensor: int = 1, *, time: int = 1, space: int = 1
) -> jax.sharding.AbstractMesh:
  """A mesh of `num_devices` that need not exist: for planning (shardings, bytes per device).

  ``param_bytes_per_device(abstract, logical_shardings(abstract, abstract_mesh(256, fsdp=-1)))``
  sizes a 256-chip job on a laptop.
  """
  sizes = dict(data=data, fsdp=fsdp, time=time, space=space, tensor=tensor)
  shape = _resolve_sizes(sizes, num_devices, 'abstract_mesh')
  return jax.sharding.AbstractMesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """For arrays whose leading axis is the batch: split over ('data', 'fsdp')."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  """A copy on every device (scalars, step counters, small tables)."""
  return NamedSharding(mesh, P())


@contextlib.contextmanager
def mesh_context(
  mesh: Mesh, rules: LogicalRules = DEFAULT_RULES, *, constrain_activations: bool = False
):
  """The context to trace models in: the logical rules, and optionally the global mesh.

  Without the global mesh (the default) Flax's activation constraints are no-ops and
  XLA propagates the shardings of the params and the batch-sharded inputs, which is
  correct and, for data/FSDP meshes, what the constraints would say anyway. With
  `constrain_activations=True` it also enters `jax.set_mesh(mesh)`, so every
  `nn.with_logical_constraint` in the model is applied. (Flax 0.12's DenseGeneral
  re-applies its 3-axis names to a flattened 2-D kernel in `apply`'s shape check under
  a global mesh and fails; attention.py must avoid DenseGeneral's boxed init for this.)
  Meshes that split ``time`` or ``space`` always get it: the constraints are what split
  an example's activations.
  """
  # A mesh that splits examples is useless without the constraints: always on there.
  with contextlib.ExitStack() as stack:
    if constrain_activations or splits_examples(mesh):
      stack.enter_context(jax.set_mesh(mesh))
    stack.enter_context(nn.logical_axis_rules(DEFAULT_RULES if rules is None else rules))
    yield


# ---------------------------------------------------------------------------------
# Logical names -> shardings.
# ---------------------------------------------------------------------------------
def _fit(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
  """Drops mesh axes the mesh lacks, and those that do not divide their dimension."""
  out = []
  entries = tuple(spec) + (None,) * (len(shape) - len(spec))
  for dim, entry in zip(shape, entries):
    axes = [a for a in ((entry,) if isinstance(entry, str) else (entry or ())) if a in mesh.shape]
    while axes and dim % math.prod(mesh.shape[a] for a in axes):
      axes.pop()
    out.append(None if not axes else axes[0] if len(axes) == 1 else tuple(axes))
  return P(*out)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Constrains an activation's sharding by logical axis names, under the global mesh.

  Like `nn.with_logical_constraint`, a no-op unless a mesh is set (`mesh_context(...,
  constrain_activations=True)`), but a mesh axis that does not divide its dimension is
  dropped (`_fit`) rather than padded, so deep U-Net levels whose few rows the ``space``
  axis does not divide simply keep them whole.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  rules = nn.get_logical_axis_rules() or DEFAULT_RULES
  spec = _fit(nn.logical_to_mesh_axes(tuple(names), rules), x.shape, mesh)
  return jax.lax.with_sharding_constraint(x, spec)


def splits_examples(mesh: Mesh | jax.sharding.AbstractMesh | None = None) -> bool:
  """Whether `mesh` (default: the global mesh, if any) splits one example's frames or rows."""
  mesh = jax.sharding.get_abstract_mesh() if mesh is None else mesh
  return not mesh.empty and any(mesh.shape.get(a, 1) > 1 for a in ('time', 'space'))


def _is_boxed(x) -> bool:
  return isinstance(x, nn.LogicallyPartitioned)


def _values(tree: Any) -> Any:
  """Unboxes without applying sharding constraints (nn.unbox does, under a global mesh)."""
  return jax.tree.map(lambda x: x.value if _is_boxed(x) else x, tree, is_leaf=_is_boxed)


def logical_sharding(
  names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: LogicalRules = DEFAULT_RULES
) -> NamedSharding:
  """The NamedSharding of one array from its logical axis names (rules None: the defaults)."""
  rules = DEFAULT_RULES if rules is None else rules
  return NamedSharding(mesh, _fit(nn.logical_to_mesh_axes(tuple(names), rules), shape, mesh))


def logical_shardings(
  boxed_tree: Any, mesh: Mesh | jax.sharding.AbstractMesh, rules: LogicalRules = DEFAULT_RULES
) -> Any:
  """A tree (unboxed structure) of NamedShardings for a tree of `nn.LogicallyPartitioned`.

  Works on real or abstract (`jax.eval_shape`) trees, and on an `abstract_mesh` for
  planning. Leaves without logical names are replicated. `rules` None: DEFAULT_RULES.
  """
  rules = DEFAULT_RULES if rules is None else rules
  specs = nn.get_partition_spec(boxed_tree)  # LogicallyPartitioned -> P(logical names)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  values = _values(boxed_tree)
  return jax.tree.map(
    lambda spec, v: NamedSharding(mesh, _fit(spec, np.shape(v), mesh)),
    mesh_specs,
    values,
    is_leaf=lambda x: isinstance(x, P),
  )


def sharded_init(
  init_fn: Callable[[jax.Array], Any],
  key: jax.Array,
  mesh: Mesh,
  rules: LogicalRules = DEFAULT_RULES,
) -> tuple[Any, Any]:
  """Initialises params directly into their shards: returns (unboxed params, shardings).

  `init_fn(key)` returns a (boxed) param tree, e.g. ``lambda k: init_params(cfg, k, ...)``.
  Its shapes come from `jax.eval_shape` (nothing allocated), the shardings from the
  logical names, and `jax.jit(init_fn, out_shardings=...)` makes every device compute
  only its own shards: the full model never exists on one device. With the
  partitionable threefry (jax's default; keep `jax_threefry_partitionable` on) the
  values equal an unsharded init with the same key.
  """
  rules = DEFAULT_RULES if rules is None else rules
  abstract = jax.eval_shape(init_fn, key)
  shardings = logical_shardings(abstract, mesh, rules)
  init = jax.jit(lambda k: _values(init_fn(k)), out_shardings=shardings)
  return init(key), shardings


def param_bytes_per_device(abstract_params: Any, shardings: Any) -> int:
  """Bytes of parameters on the fullest device, given their shardings (nothing allocated).

  `abstract_params` may be boxed or not, real or `jax.ShapeDtypeStruct`s. For optimizer
  state multiply accordingly (Adam: x3 in float32).
  """
  leaves = jax.tree.leaves(_values(abstract_params))
  shards = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
  if len(leaves) != len(shards):
    raise ValueError(f'params have {len(leaves)} leaves but shardings {len(shards)}')
  total = 0
  for v, s in zip(leaves, shards):
    shape = tuple(np.shape(v))
    total += math.prod(s.shard_shape(shape)) * np.dtype(v.dtype).itemsize
  return total


# ---------------------------------------------------------------------------------
# Multi-host start-up.
# ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DistributedPlan:
  """What `initialize_distributed` decided: `mode` and the kwargs for jax.distributed."""

  mode: str  # 'single' | 'explicit' | 'slurm' | 'mpi' | 'tpu'
  kwargs: dict


def _int_env(env, name):
  v = env.get(name)
  return int(v) if v not in (None, '') else None


def plan_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  *,
  env: Mapping[str, str] | None = None,
) -> DistributedPlan:
  """Decides how (and whether) to call `jax.distributed.initialize`; pure, for tests.

  In order: explicit arguments, then IVJ_COORDINATOR / IVJ_NUM_PROCESSES / IVJ_PROCESS_ID,
  then SLURM (SLURM_NTASKS > 1), Open MPI (OMPI_COMM_WORLD_SIZE > 1), a multi-host Cloud
  TPU (TPU_WORKER_HOSTNAMES with several hosts, or IVJ_DISTRIBUTED=1 on a TPU VM);
  otherwise a single process and nothing to do. IVJ_DISTRIBUTED=0 forces single.
  """
  env = os.environ if env is None else env
  forced = env.get('IVJ_DISTRIBUTED', '').strip().lower()
  if forced in ('0', 'false', 'no', 'off'):
    return DistributedPlan('single', {})
  coordinator_address = coordinator_address or env.get('IVJ_COORDINATOR') or None
  if num_processes is None:
    num_processes = _int_env(env, 'IVJ_NUM_PROCESSES')
  if process_id is None:
    process_id = _int_env(env, 'IVJ_PROCESS_ID')
  if coordinator_address is not None:
    if num_processes is None or process_id is None:
      raise ValueError(
        f'coordinator {coordinator_address!r} given without num_processes and process_id: '
        'pass all three (or set IVJ_COORDINATOR, IVJ_NUM_PROCESSES, IVJ_PROCESS_ID).'
      )
    if not 0 <= process_id < num_processes:
      raise ValueError(f'process_id {process_id} is not in [0, num_processes={num_processes})')
    if num_processes == 1:
      return DistributedPlan('single', {})
    return DistributedPlan(
      'explicit',
      dict(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
      ),
    )
  if num_processes is not None or process_id is not None:
    raise ValueError(
      'num_processes/process_id given without a coordinator address '
      '(host:port of process 0): pass coordinator_address or set IVJ_COORDINATOR.'
    )
  if (
    _int_env(env, 'SLURM_NTASKS') or _int_env(env, 'SLURM_NPROCS') or 1
  ) > 1 and 'SLURM_JOB_ID' in env:
    return DistributedPlan('slurm', {})  # jax reads SLURM_* itself
  if (_int_env(env, 'OMPI_COMM_WORLD_SIZE') or 1) > 1:
    return DistributedPlan('mpi', {})
  hosts = [h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h.strip()]
  if len(hosts) > 1 or (forced in ('1', 'true', 'yes', 'on')):
    return DistributedPlan('tpu', {})  # jax auto-detects the pod (GCE metadata / GKE env)
  return DistributedPlan('single', {})


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  **kwargs,
) -> DistributedPlan:
  """Joins this process to a multi-host job, or does nothing for a single process.

  Call first thing in `main`, before any other JAX call. Cases:
    * Cloud TPU pod slice (multi-host): started on every host with the same command
      (``gcloud compute tpus tpu-vm ssh ... --worker=all``); jax finds the pod itself.
      On a TPU VM without TPU_WORKER_HOSTNAMES set, IVJ_DISTRIBUTED=1 asks for it.
    * SLURM: one task per host (``srun --ntasks-per-node=1``); jax reads SLURM_*.
    * Open MPI (``mpirun``): jax reads OMPI_*.
    * Anything else (several GPU VMs, localhost tests): the coordinator explicitly, as
      arguments or IVJ_COORDINATOR=host:port, IVJ_NUM_PROCESSES, IVJ_PROCESS_ID.
  IVJ_DISTRIBUTED=0 turns all of this off. Extra kwargs go to jax.distributed.initialize
  (e.g. local_device_ids). Returns the plan that was carried out.

  A process that dies (a lost host, an OOM kill) makes the others exit with an error
  once the coordination service misses its heartbeats: after jax's 100 s by default,
  or IVJ_HEARTBEAT_TIMEOUT seconds. Nothing hangs on a dead peer.
  """
  plan = plan_distributed(coordinator_address, num_processes, process_id)
  if plan.mode == 'single':
    return plan
  heartbeat = _int_env(os.environ, 'IVJ_HEARTBEAT_TIMEOUT')
  if heartbeat is not None:
    kwargs.setdefault('heartbeat_timeout_seconds', heartbeat)
  if jax.distributed.is_initialized():
    log.info('jax.distributed is already initialised; leaving it as it is')
    return plan
  log.info('jax.distributed.initialize (%s) %s', plan.mode, plan.kwargs)
  jax.distributed.initialize(**plan.kwargs, **kwargs)
  log.info(
    'process %d of %d; %d local / %d global devices',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return plan


_barriers = 0  # barrier ids must be unique per job: every process counts them alike


def barrier(name: str, timeout_s: float = 1800.0) -> None:
  """Waits until every process of a multi-process job has reached this point (a no-op in
  one process). Meets through the coordination service, not through the devices: it waits
  as long as `timeout_s`, where a first collective on CPU gives up after 30 s."""
  global _barriers
  if jax.process_count() == 1:
    return
  from jax._src import distributed  # the client jax.distributed.initialize made

  _barriers += 1
  distributed.global_state.client.wait_at_barrier(f'ivj/{_barriers}/{name}', int(timeout_s * 1000))


def compiled_together(fn: Callable, *args, name: str) -> Callable:
  """`fn` (a jitted function) compiled for `args`; in a multi-process job every process
  then waits at a `barrier` until all have compiled, so that none starts the program's
  collectives long before another. Processes can compile at very different speeds: one
  may read the program from JAX's persistent compilation cache while another compiles it,
  and a CPU collective waits only 30 s for its peers. One process: `fn` itself."""
  if jax.process_count() == 1:
    return fn
  compiled = fn.lower(*args).compile()
  barrier(f'compiled {name}')
  return compiled
