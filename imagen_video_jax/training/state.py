"""Train state (params, EMA, optimizer, non-finite counters) and the optimizer.

The state is one pytree, so it is sharded, donated, checkpointed and restored as a
whole. Its shardings come from the U-Net's logical axis names (MaxText style):
`jax.eval_shape` of the boxed init gives the logical specs, the mesh rules map them
to mesh axes, and the optimizer state takes the sharding of the parameter it
mirrors (`optax.tree_map_params`), scalars replicated.
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec

from imagen_video_jax import params_io


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes.

  step: completed steps (skipped non-finite steps included: the data moved on).
  nonfinite_in_a_row / nonfinite_total: skipped steps, consecutive and overall.
  Applied updates = step - nonfinite_total (the optimizer's own count).
  """

  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any
  nonfinite_in_a_row: jax.Array
  nonfinite_total: jax.Array

  @classmethod
  def create(cls, params, tx: optax.GradientTransformation) -> 'TrainState':
    zero = jnp.zeros((), jnp.int32)
    # A distinct buffer for the EMA: params and EMA are donated separately.
    ema = jax.tree.map(lambda p: p * jnp.ones((), p.dtype), params)
    return cls(
      step=zero,
      params=params,
      ema_params=ema,
      opt_state=tx.init(params),
      nonfinite_in_a_row=zero,
      nonfinite_total=zero,
    )


def all_finite(tree) -> jax.Array:
  """Whether every float value of `tree` is finite (a scalar bool)."""
  leaves = [
    jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def make_schedule(optim) -> optax.Schedule:
  """Linear warm-up to `lr`, then constant (decay_steps=0) or cosine to lr*end_lr_fraction."""
  lr, warmup, decay = float(optim.lr), int(optim.warmup_steps), int(optim.decay_steps)
  if decay > 0:
    return optax.warmup_cosine_decay_schedule(
      0.0, lr, warmup, warmup + decay, lr * float(optim.end_lr_fraction)
    )
  if warmup > 0:
    return optax.linear_schedule(0.0, lr, warmup)  # stays at lr afterwards
  return optax.constant_schedule(lr)


TRAINABLE = ('all', 'temporal')  # optim.trainable: which parameters training updates


def trainable_mask(params, trainable: str = 'all'):
  """A pytree of Python bools over `params` (True: trained), or None when all are.

  'temporal': only the U-Net's temporal layers (`unet.TEMPORAL_LAYERS`), e.g. to fine-tune
  a video U-Net inflated from an image checkpoint while its image layers stay fixed.
  """
  from imagen_video_jax.models import unet as unet_lib

  if trainable not in TRAINABLE:
    raise ValueError(f'optim.trainable is {trainable!r}; use one of {", ".join(TRAINABLE)}')
  if trainable == 'all':
    return None
  return jax.tree_util.tree_map_with_path(
    lambda path, _: unet_lib.is_temporal(params_io.key_path_name(path)), params
  )


def make_optimizer(optim) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (no decay on biases and norm scales) after global-norm clipping.

  `optim.trainable='temporal'` (default 'all'): an optax partition; the other parameters
  get exactly zero updates and no Adam moments, and the clipping norm is over the
  trained parameters' gradients only.
  """
  schedule = make_schedule(optim)
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  parts = []
  if float(optim.grad_clip) > 0:
    parts.append(optax.clip_by_global_norm(float(optim.grad_clip)))
  parts.append(
    optax.adamw(
      schedule,
      b1=float(optim.b1),
      b2=float(optim.b2),
      eps=float(optim.eps),
      weight_decay=float(optim.weight_decay),
      mask=decay_mask,
    )
  )
  tx = optax.chain(*parts)
  trainable = str(optim.get('trainable', 'all'))
  if trainable != 'all':
    labels = lambda params: jax.tree.map(
      lambda t: 'train' if t else 'freeze', trainable_mask(params, trainable)
    )
    tx = optax.multi_transform({'train': tx, 'freeze': optax.set_to_zero()}, labels)
  return tx, schedule


def ema_update(ema, params, decay: float, num_updates: jax.Array, warmup=True, frozen=None):
  """EMA with warm-up: the decay is min(decay, (1 + n) / (10 + n)) after n updates,
  so early EMA weights are not dominated by the random init.

  `warmup=False` uses `decay` from the first update: for a warm start, whose EMA is
  already trained weights (the warm-up would replace 90% of it at the first step and
  keep a window of ~n/9 steps for thousands of steps). `warmup` may also be a pytree
  of bools over the params (an inflated warm start: only its fresh temporal layers).
  `frozen`: a pytree of bools (or None); a frozen parameter's EMA is kept as it is
  (bit for bit: d * e + (1 - d) * e need not equal e in floating point).
  """
  d_const = jnp.float32(decay)
  n = num_updates.astype(jnp.float32)
  d_warm = jnp.minimum(d_const, (1.0 + n) / (10.0 + n))
  warm = jax.tree.map(lambda _: bool(warmup), ema) if isinstance(warmup, bool) else warmup
  frozen = jax.tree.map(lambda _: False, ema) if frozen is None else frozen

  def one(e, p, w, f):
    if f:
      return e
    d = d_warm if w else d_const
    return (d * e + (1.0 - d) * p).astype(e.dtype)

  return jax.tree.map(one, ema, params, warm, frozen)


def param_shardings(boxed_init: Callable[[jax.Array], Any], mesh, rules) -> tuple[Any, Any]:
  """(abstract params, their shardings) of a model, without allocating anything: what a
  frozen copy of it (a distillation's teacher) is placed by.

  boxed_init(key) returns the model's boxed (LogicallyPartitioned) params.
  """
  from imagen_video_jax import parallel

  boxed = jax.eval_shape(boxed_init, jax.random.key(0))
  return nn.unbox(boxed), parallel.logical_shardings(boxed, mesh, rules)


def state_shardings(
  boxed_init: Callable[[jax.Array], Any], tx: optax.GradientTransformation, mesh, rules
) -> tuple[TrainState, TrainState]:
  """(abstract state, its shardings) without allocating anything.

  boxed_init(key) returns the model's boxed (LogicallyPartitioned) params.
  """
  params, param_sh = param_shardings(boxed_init, mesh, rules)
  abstract = jax.eval_shape(lambda p: TrainState.create(p, tx), params)
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_sh = _opt_state_shardings(abstract.opt_state, param_sh, replicated)
  shardings = TrainState(
    step=replicated,
    params=param_sh,
    ema_params=param_sh,
    opt_state=opt_sh,
    nonfinite_in_a_row=replicated,
    nonfinite_total=replicated,
  )
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )
  return abstract, shardings


def _opt_state_shardings(opt_state, param_sh, replicated):
  """Each optimizer-state leaf in the sharding of the parameter it mirrors, others replicated.

  A leaf mirrors a parameter when it is an array whose key path ends in the parameter's
  path: the Adam moments (also inside the `optax.multi_transform` of
  `optim.trainable`, whose frozen parameters have no moments), not the step counts.
  """
  by_path = {
    tuple(params_io.key_path_name(path).split('/')): sh
    for path, sh in jax.tree_util.tree_flatten_with_path(
      param_sh, is_leaf=lambda x: isinstance(x, NamedSharding)
    )[0]
  }
  depths = sorted({len(p) for p in by_path}, reverse=True)

  def one(path, leaf):
    keys = tuple(params_io.key_path_name(path).split('/'))
    for n in depths:
      sh = by_path.get(keys[-n:]) if len(keys) >= n else None
      if sh is not None and getattr(leaf, 'ndim', 0) > 0:
        return sh
    return replicated

  return jax.tree_util.tree_map_with_path(one, opt_state)


def make_init_fn(
  boxed_init: Callable[[jax.Array], Any], tx: optax.GradientTransformation, shardings: TrainState
) -> Callable[[jax.Array], TrainState]:
  """Initialises the state directly into its shardings (never whole on one device).

  Call it outside the mesh context: Flax re-applies logical constraints while it
  reshapes boxed DenseGeneral kernels at init, which fails under a mesh.
  """
  return jax.jit(lambda k: TrainState.create(nn.unbox(boxed_init(k)), tx), out_shardings=shardings)
