"""The T5 v1.1 encoder (Raffel et al. 2020; the "1.1" recipe), in Flax Linen.

Imagen Video conditions every stage on the frozen encoder of T5 v1.1 XXL. This is that
encoder, numerically equal to `transformers`' `T5EncoderModel` (the tests hold it to
1e-4 in float32) and able to read T5X and Hugging Face checkpoints (see
`imagen_video_jax.text.checkpoints`).

T5 v1.1 differs from T5 1.0 in ways that matter for loading weights:
  * RMSNorm ("T5 LayerNorm"): no mean subtraction, no bias, eps 1e-6, in float32;
  * gated-GELU feed-forward (tanh approximation of GELU): wo(gelu(wi_0 x) * wi_1 x);
  * no biases anywhere, no 1/sqrt(d_kv) in attention (T5 folds it into the query
    initialisation, so published weights already contain it);
  * one relative-position bias table, created by the first layer and shared by all;
  * untied input embedding (irrelevant to the encoder alone, but it means the
    embedding is not rescaled).

Parameter tree (names follow T5X, so its checkpoints map one-to-one):

  token_embedder/embedding          [vocab, embed]        ('vocab', 'embed')
  relpos_bias/rel_embedding         [heads, buckets]      ('heads', None)
  layers_N/pre_attention_layer_norm/scale  [embed]        ('embed',)
  layers_N/attention/{query,key,value}/kernel [embed, heads, kv] ('embed','heads','kv')
  layers_N/attention/out/kernel     [heads, kv, embed]    ('heads', 'kv', 'embed')
  layers_N/pre_mlp_layer_norm/scale [embed]               ('embed',)
  layers_N/mlp/{wi_0,wi_1}/kernel   [embed, mlp]          ('embed', 'mlp')
  layers_N/mlp/wo/kernel            [mlp, embed]          ('mlp', 'embed')
  encoder_norm/scale                [embed]               ('embed',)

Activations are constrained as ('batch', None, 'embed'). As everywhere in this
package the module holds no mesh and no rules: the caller decides how the logical
names map onto mesh axes (default rules live in `text/checkpoints.py`).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imagen_video_jax.models.layers import relative_position_bucket

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# The published T5 v1.1 sizes (T5X gin files t5_1_1/{small,...,xxl}.gin and the
# google/t5-v1_1-* configs). `tiny` is ours: the Moving Digits world and the tests.
_NAMED = {
  'tiny': dict(d_model=64, num_layers=2, num_heads=4, d_kv=16, d_ff=128),
  'small': dict(d_model=512, num_layers=8, num_heads=6, d_kv=64, d_ff=1024),
  'base': dict(d_model=768, num_layers=12, num_heads=12, d_kv=64, d_ff=2048),
  'large': dict(d_model=1024, num_layers=24, num_heads=16, d_kv=64, d_ff=2816),
  'xl': dict(d_model=2048, num_layers=24, num_heads=32, d_kv=64, d_ff=5120),
  'xxl': dict(d_model=4096, num_layers=24, num_heads=64, d_kv=64, d_ff=10240),
}


@dataclasses.dataclass(frozen=True)
class T5Config:
  """Hyper-parameters of a T5 v1.1 encoder.

  `dtype` is the compute dtype ('float32' or 'bfloat16'); norms and the attention
  softmax always run in float32. Parameters keep whatever dtype they are stored in.
  """

  vocab_size: int = 32128
  d_model: int = 4096
  num_layers: int = 24
  num_heads: int = 64
  d_kv: int = 64
  d_ff: int = 10240
  relative_attention_num_buckets: int = 32
  relative_attention_max_distance: int = 128
  layer_norm_epsilon: float = 1e-6
  dtype: str = 'float32'

  def __post_init__(self):
    for field in (
      'vocab_size',
      'd_model',
      'num_layers',
      'num_heads',
      'd_kv',
      'd_ff',
      'relative_attention_num_buckets',
      'relative_attention_max_distance',
    ):
      value = getattr(self, field)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ValueError(f'T5Config.{field} must be a positive integer, got {value!r}.')
    buckets = self.relative_attention_num_buckets
    # Bidirectional bucketing halves the table, then keeps half of it exact; with fewer
    # than 4 buckets, or max_distance inside the exact range, the log formula divides
    # by log(<=1).
    if buckets < 4 or buckets % 2:
      raise ValueError(
        f'T5Config.relative_attention_num_buckets must be even and >= 4, got {buckets}.'
      )
    if self.relative_attention_max_distance <= buckets // 4:
      raise ValueError(
        'T5Config.relative_attention_max_distance must exceed num_buckets // 4 '
        f'({buckets // 4}), got {self.relative_attention_max_distance}.'
      )
    if not self.layer_norm_epsilon > 0:
      raise ValueError(f'T5Config.layer_norm_epsilon must be > 0, got {self.layer_norm_epsilon!r}.')
    if self.dtype not in _DTYPES:
      raise ValueError(f'T5Config.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}.')

  @property
  def compute_dtype(self) -> Any:
    return _DTYPES[self.dtype]

  @property
  def inner_dim(self) -> int:
    return self.num_heads * self.d_kv

  @classmethod
  def names(cls) -> tuple[str, ...]:
    """The named sizes accepted by `from_name`."""
    return tuple(_NAMED)

  @classmethod
  def from_name(cls, name: str, **overrides) -> 'T5Config':
    """A published T5 v1.1 size ('small', 'base', 'large', 'xl', 'xxl') or 'tiny'."""
    if name not in _NAMED:
      raise ValueError(f'Unknown T5 size {name!r}; choose one of {", ".join(_NAMED)}.')
    return cls(**{**_NAMED[name], **overrides})

  @classmethod
  def from_hf_config(cls, hf: Mapping[str, Any], **overrides) -> 'T5Config':
    """Reads a Hugging Face `config.json` dict of a T5 v1.1 / mT5 model.

    Refuses models whose encoder is not T5 v1.1 (T5 1.0's ReLU feed-forward,
    UMT5's per-layer position biases) instead of silently loading them wrong.
    """
    model_type = hf.get('model_type', 't5')
    if model_type not in ('t5', 'mt5'):
      raise ValueError(
        f'config.json has model_type={model_type!r}; only T5 v1.1 '
        "encoders ('t5', 'mt5') are supported."
      )
    proj = hf.get('feed_forward_proj', 'relu')
    if proj not in ('gated-gelu', 'gated-gelu_new'):
      raise ValueError(
        f'config.json has feed_forward_proj={proj!r}; this encoder is T5 v1.1 '
        "('gated-gelu'). T5 1.0 checkpoints (ReLU) are not supported."
      )
    missing = [
      k for k in ('vocab_size', 'd_model', 'num_layers', 'num_heads', 'd_kv', 'd_ff') if k not in hf
    ]
    if missing:
      raise ValueError(f'config.json lacks {missing}; is it a T5 config?')
    return cls(
      vocab_size=int(hf['vocab_size']),
      d_model=int(hf['d_model']),
      num_layers=int(hf['num_layers']),
      num_heads=int(hf['num_heads']),
      d_kv=int(hf['d_kv']),
      d_ff=int(hf['d_ff']),
      relative_attention_num_buckets=int(hf.get('relative_attention_num_buckets', 32)),
      relative_attention_max_distance=int(hf.get('relative_attention_max_distance', 128)),
      layer_norm_epsilon=float(hf.get('layer_norm_epsilon', 1e-6)),
      **overrides,
    )

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> 'T5Config':
    """Inverse of `to_dict`; unknown keys are an error (a typo should not vanish)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f'Unknown T5Config keys {sorted(unknown)}.')
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  def num_params(self) -> int:
    """Parameter count of the encoder (embedding included)."""
    per_layer = 4 * self.d_model * self.inner_dim + 3 * self.d_model * self.d_ff
    per_layer += 2 * self.d_model
    return (
      self.vocab_size * self.d_model
      + per_layer * self.num_layers
      + self.num_heads * self.relative_attention_num_buckets
      + self.d_model
    )


def _param(module: nn.Module, name: str, init, shape, axes):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.float32)


class RMSNorm(nn.Module):
  """T5's LayerNorm: scale only, statistics in float32 (as HF and T5X do)."""

  eps: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = _param(self, 'scale', nn.initializers.ones, (x.shape[-1],), ('embed',))
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    return (x * jnp.asarray(scale, jnp.float32)).astype(self.dtype)


class RelativePositionBias(nn.Module):
  """The shared [heads, buckets] table, expanded to a [1, heads, q, k] logit bias."""

  config: T5Config

  @nn.compact
  def __call__(self, length: int):
    cfg = self.config
    table = _param(
      self,
      'rel_embedding',
      nn.initializers.normal(1.0),
      (cfg.num_heads, cfg.relative_attention_num_buckets),
      ('heads', None),
    )
    # Buckets depend only on the static length: compute them once at trace time so
    # the compiled program holds a constant and XLA never re-derives the float log.
    with jax.ensure_compile_time_eval():
      pos = np.arange(length, dtype=np.int32)
      buckets = np.asarray(
        relative_position_bucket(
          jnp.asarray(pos[None, :] - pos[:, None]),
          bidirectional=True,
          num_buckets=cfg.relative_attention_num_buckets,
          max_distance=cfg.relative_attention_max_distance,
        )
      )
    bias = jnp.asarray(table, jnp.float32)[:, buckets]  # [heads, q, k]
    return bias[None]


class SelfAttention(nn.Module):
  """Multi-head self-attention without biases or logit scaling (T5)."""

  config: T5Config

  @nn.compact
  def __call__(self, x, bias, mask):
    cfg = self.config
    dt = cfg.compute_dtype
    # Same init as HF's T5 `_init_weights` (query carries the folded d_kv**-0.5).
    shape = (cfg.d_model, cfg.num_heads, cfg.d_kv)
    axes = ('embed', 'heads', 'kv')
    q_init = nn.initializers.normal((cfg.d_model * cfg.d_kv) ** -0.5)
    kv_init = nn.initializers.normal(cfg.d_model**-0.5)
    q = jnp.einsum('bld,dhk->blhk', x, self._kernel('query', q_init, shape, axes, dt))
    k = jnp.einsum('bld,dhk->blhk', x, self._kernel('key', kv_init, shape, axes, dt))
    v = jnp.einsum('bld,dhk->blhk', x, self._kernel('value', kv_init, shape, axes, dt))
    logits = jnp.einsum('bqhk,bshk->bhqs', q, k, preferred_element_type=jnp.float32)
    logits = logits + bias
    # A large finite negative (not -inf): a row with no valid key (the null prompt)
    # then softmaxes to a uniform average instead of NaN.
    logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits, axis=-1).astype(dt)
    out = jnp.einsum('bhqs,bshk->bqhk', weights, v)
    o_init = nn.initializers.normal(cfg.inner_dim**-0.5)
    wo = self._kernel(
      'out', o_init, (cfg.num_heads, cfg.d_kv, cfg.d_model), ('heads', 'kv', 'embed'), dt
    )
    return jnp.einsum('bqhk,hkd->bqd', out, wo)

  def _kernel(self, name, init, shape, axes, dtype):
    # One submodule per projection so the tree reads attention/query/kernel (T5X).
    return jnp.asarray(_Kernel(kernel_init=init, shape=shape, axes=axes, name=name)(), dtype)


class _Kernel(nn.Module):
  """A bare named kernel: gives the T5X-style path `<name>/kernel`."""

  kernel_init: Any
  shape: tuple[int, ...]
  axes: tuple[Any, ...]

  @nn.compact
  def __call__(self):
    return _param(self, 'kernel', self.kernel_init, self.shape, self.axes)


class GatedGeluMlp(nn.Module):
  """wo(gelu_tanh(wi_0 x) * wi_1 x): T5 v1.1's feed-forward ("gated-gelu")."""

  config: T5Config

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dt = cfg.compute_dtype
    in_init = nn.initializers.normal(cfg.d_model**-0.5)
    w0 = _Kernel(in_init, (cfg.d_model, cfg.d_ff), ('embed', 'mlp'), name='wi_0')()
    w1 = _Kernel(in_init, (cfg.d_model, cfg.d_ff), ('embed', 'mlp'), name='wi_1')()
    wo = _Kernel(
      nn.initializers.normal(cfg.d_ff**-0.5), (cfg.d_ff, cfg.d_model), ('mlp', 'embed'), name='wo'
    )()
    h = jax.nn.gelu(x @ jnp.asarray(w0, dt), approximate=True) * (x @ jnp.asarray(w1, dt))
    return h @ jnp.asarray(wo, dt)


class EncoderLayer(nn.Module):
  """Pre-norm residual attention then pre-norm residual gated-GELU MLP."""

  config: T5Config

  @nn.compact
  def __call__(self, x, bias, mask):
    cfg = self.config
    norm = lambda name: RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name=name)
    x = x + SelfAttention(cfg, name='attention')(norm('pre_attention_layer_norm')(x), bias, mask)
    x = nn.with_logical_constraint(x, ('batch', None, 'embed'))
    x = x + GatedGeluMlp(cfg, name='mlp')(norm('pre_mlp_layer_norm')(x))
    return nn.with_logical_constraint(x, ('batch', None, 'embed'))


class T5Encoder(nn.Module):
  """T5 v1.1 encoder: `(ids [B, L] int, mask [B, L] bool) -> text_emb [B, L, D]`.

  Positions where `mask` is False are never attended to; their own outputs are
  computed anyway (as in `transformers`) and should be ignored by the caller — the
  U-Nets read `text_mask`, and `encode_text` stores zeros there.
  """

  config: T5Config

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    cfg = self.config
    if ids.ndim != 2:
      raise ValueError(f'T5Encoder expects token ids [batch, length], got {ids.shape}.')
    if mask is None:
      mask = ids != 0  # T5's pad id is 0.
    mask = mask.astype(bool)
    embedding = _Embedding(cfg, name='token_embedder')()
    x = jnp.take(jnp.asarray(embedding, cfg.compute_dtype), ids, axis=0)
    x = nn.with_logical_constraint(x, ('batch', None, 'embed'))
    bias = RelativePositionBias(cfg, name='relpos_bias')(ids.shape[1])
    for i in range(cfg.num_layers):
      x = EncoderLayer(cfg, name=f'layers_{i}')(x, bias, mask)
    return RMSNorm(cfg.layer_norm_epsilon, cfg.compute_dtype, name='encoder_norm')(x)


class _Embedding(nn.Module):
  config: T5Config

  @nn.compact
  def __call__(self):
    cfg = self.config
    return _param(
      self,
      'embedding',
      nn.initializers.normal(1.0),
      (cfg.vocab_size, cfg.d_model),
      ('vocab', 'embed'),
    )


def _init_std(config: T5Config, path: tuple[str, ...]) -> float | None:
  """The std of each parameter's normal init (None: ones), as the modules above."""
  name = path[-2] if path[-1] == 'kernel' else path[-1]
  if path[-1] == 'scale':
    return None
  return {
    'embedding': 1.0,
    'rel_embedding': 1.0,
    'query': (config.d_model * config.d_kv) ** -0.5,
    'key': config.d_model**-0.5,
    'value': config.d_model**-0.5,
    'out': config.inner_dim**-0.5,
    'wi_0': config.d_model**-0.5,
    'wi_1': config.d_model**-0.5,
    'wo': config.d_ff**-0.5,
  }[name]


def init_params(config: T5Config, seed: int = 0):
  """Random float32 parameters with the modules' init distributions, from numpy.

  The Moving Digits world freezes a randomly initialised T5; drawing it with numpy's
  PCG64 keeps those weights identical on every platform and JAX version (and avoids
  compiling a threefry program per parameter, seconds on CPU).
  """
  rng = np.random.default_rng(seed)
  flat, treedef = jax.tree_util.tree_flatten_with_path(
    abstract_params(config), is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
  )
  leaves = {}
  for path, leaf in sorted(flat, key=lambda pl: jax.tree_util.keystr(pl[0])):
    keys = tuple(k.key for k in path)
    std = _init_std(config, keys)
    shape = leaf.value.shape
    value = (
      np.ones(shape, np.float32)
      if std is None
      else (rng.standard_normal(shape, dtype=np.float32) * np.float32(std))
    )
    leaves[jax.tree_util.keystr(path)] = jnp.asarray(value)
  return jax.tree_util.tree_unflatten(
    treedef, [leaves[jax.tree_util.keystr(path)] for path, _ in flat]
  )


def abstract_params(config: T5Config):
  """Boxed `ShapeDtypeStruct`s of the parameters (shapes + logical axis names)."""
  ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
  return jax.eval_shape(lambda i: T5Encoder(config).init(jax.random.key(0), i, i > 0), ids)[
    'params'
  ]
