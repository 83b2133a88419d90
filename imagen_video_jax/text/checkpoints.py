"""T5 v1.1 encoder weights: Hugging Face and T5X checkpoints in, orbax out.

Readers:
  * Hugging Face: a `T5EncoderModel` / `T5ForConditionalGeneration` directory with
    `config.json` and `model.safetensors` (or shards + `model.safetensors.index.json`).
  * T5X: a `checkpoint_N/` directory (or its parent) as published for t5_1_1_* in
    gs://t5-data/pretrained_models/t5x/: a msgpack file `checkpoint` holding
    `{'version', 'optimizer': {'target': params, 'state': ...}}`, where each array is
    either inline or a TensorStore spec of a zarr array stored next to it (path
    `target.encoder.layers_0.attention.query.kernel`, relative to the directory).

PyTorch pickles (`pytorch_model.bin`, `*.pt`, ...) are refused: unpickling runs code.

Loading never materialises a whole model on one host: each parameter is created with
`jax.make_array_from_callback` in its final sharding and every device shard reads only
its own slice of the source file (safetensors slices, TensorStore reads).

Writer: an orbax checkpoint `DIR/params` plus `DIR/t5_config.json` (and the
SentencePiece model as `DIR/spiece.model` when known); `load_t5(DIR)` reads it back.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import re
import shutil
from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh

from imagen_video_jax.models.t5 import T5Config, abstract_params
from imagen_video_jax.parallel import DEFAULT_RULES, logical_sharding  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

# Shardings come from the project's one logical-rules table (DEFAULT_RULES, re-exported
# here): mesh axes a mesh lacks are dropped, and a dimension a mesh axis does not
# divide stays replicated, so one rule set serves every mesh.
CONFIG_FILE = 't5_config.json'
PARAMS_DIR = 'params'
VOCAB_FILE = 'spiece.model'
FORMAT = 'imagen_video_jax.t5/1'
PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.ckpt', '.pkl', '.pickle')


class CheckpointError(ValueError):
  """A checkpoint could not be read; the message says what was wrong and what to do."""


def pickle_refusal(paths: Sequence[str]) -> str:
  """The message shown when only PyTorch pickles are offered."""
  names = ', '.join(os.path.basename(p) for p in paths)
  return (
    f'Refusing to read {names}: PyTorch pickles can run arbitrary code when loaded, '
    'so this tool never unpickles anything. Convert the checkpoint to safetensors '
    'once, on a machine and with a model you trust, e.g.\n'
    '  python -c "from transformers import T5EncoderModel; '
    "T5EncoderModel.from_pretrained('SRC').save_pretrained('DST', "
    'safe_serialization=True)"\n'
    'then convert DST (it holds config.json and model.safetensors).'
  )


# ---------------------------------------------------------------------------------
# Shardings.
# ---------------------------------------------------------------------------------
def param_shardings(config: T5Config, mesh: Mesh | None = None, rules=None):
  """A tree of NamedShardings for the encoder's parameters (one device if no mesh)."""
  if mesh is None:
    mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
  return jax.tree.map(
    lambda p: logical_sharding(p.names, p.value.shape, mesh, rules),
    abstract_params(config),
    is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
  )


# ---------------------------------------------------------------------------------
# Lazy sources: a 1-D/2-D array in a file, read slice by slice.
# ---------------------------------------------------------------------------------
@dataclasses.dataclass
class _Tensor:
  name: str
  shape: tuple[int, ...]
  read: Callable[[tuple[slice, ...]], np.ndarray]


@dataclasses.dataclass
class _Mapped:
  """A source tensor seen in our layout: optionally transposed, then one dimension
  split into (heads, d_kv) — 'last' for q/k/v kernels, 'first' for the out kernel."""

  tensor: _Tensor
  transpose: bool = False
  split: str | None = None
  d_kv: int = 1

  @property
  def shape(self) -> tuple[int, ...]:
    s = self.tensor.shape[::-1] if self.transpose else self.tensor.shape
    if self.split == 'last':
      return (s[0], s[1] // self.d_kv, self.d_kv)
    if self.split == 'first':
      return (s[0] // self.d_kv, self.d_kv, s[1])
    return tuple(s)

  def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
    idx = [slice(*sl.indices(n)[:2]) for sl, n in zip(index, self.shape)]
    kv = self.d_kv
    if self.split == 'last':
      a, h, k = idx
      two_d = (a, slice(h.start * kv, h.stop * kv))
    elif self.split == 'first':
      h, k, b = idx
      two_d = (slice(h.start * kv, h.stop * kv), b)
    else:
      two_d = tuple(idx)
    if self.transpose:
      block = np.asarray(self.tensor.read(two_d[::-1])).T
    else:
      block = np.asarray(self.tensor.read(two_d))
    if self.split == 'last':
      block = block.reshape(block.shape[0], -1, kv)[:, :, k]
    elif self.split == 'first':
      block = block.reshape(-1, kv, block.shape[-1])[:, k, :]
    return block


def _abstract_leaves(config: T5Config) -> dict[tuple[str, ...], nn.LogicallyPartitioned]:
  flat = jax.tree_util.tree_flatten_with_path(
    abstract_params(config), is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
  )[0]
  return {tuple(k.key for k in path): leaf for path, leaf in flat}


def _hf_layout(config: T5Config, get: Callable[[str], _Tensor]) -> dict:
  """Our parameter path -> HF tensor. HF Linear weights are [out, in]: transpose."""
  kv = config.d_kv
  emb = 'shared.weight'
  mapping = {
    ('token_embedder', 'embedding'): _Mapped(get(emb, 'encoder.embed_tokens.weight')),
    ('relpos_bias', 'rel_embedding'): _Mapped(
      get('encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight'), transpose=True
    ),
    ('encoder_norm', 'scale'): _Mapped(get('encoder.final_layer_norm.weight')),
  }
  for i in range(config.num_layers):
    b = f'encoder.block.{i}.layer'
    lyr = f'layers_{i}'
    for ours, theirs in (('query', 'q'), ('key', 'k'), ('value', 'v')):
      mapping[(lyr, 'attention', ours, 'kernel')] = _Mapped(
        get(f'{b}.0.SelfAttention.{theirs}.weight'), transpose=True, split='last', d_kv=kv
      )
    mapping[(lyr, 'attention', 'out', 'kernel')] = _Mapped(
      get(f'{b}.0.SelfAttention.o.weight'), transpose=True, split='first', d_kv=kv
    )
    mapping[(lyr, 'pre_attention_layer_norm', 'scale')] = _Mapped(get(f'{b}.0.layer_norm.weight'))
    mapping[(lyr, 'pre_mlp_layer_norm', 'scale')] = _Mapped(get(f'{b}.1.layer_norm.weight'))
    for w in ('wi_0', 'wi_1', 'wo'):
      mapping[(lyr, 'mlp', w, 'kernel')] = _Mapped(
        get(f'{b}.1.DenseReluDense.{w}.weight'), transpose=True
      )
  return mapping


def _t5x_layout(config: T5Config, get: Callable[[str], _Tensor]) -> dict:
  """Our parameter path -> T5X tensor. Same names; T5X kernels are 2-D."""
  kv = config.d_kv
  mapping = {
    ('token_embedder', 'embedding'): _Mapped(get('token_embedder/embedding')),
    ('relpos_bias', 'rel_embedding'): _Mapped(get('encoder/relpos_bias/rel_embedding')),
    ('encoder_norm', 'scale'): _Mapped(get('encoder/encoder_norm/scale')),
  }
  for i in range(config.num_layers):
    lyr = f'layers_{i}'
    p = f'encoder/{lyr}'
    for name in ('query', 'key', 'value'):
      mapping[(lyr, 'attention', name, 'kernel')] = _Mapped(
        get(f'{p}/attention/{name}/kernel'), split='last', d_kv=kv
      )
    mapping[(lyr, 'attention', 'out', 'kernel')] = _Mapped(
      get(f'{p}/attention/out/kernel'), split='first', d_kv=kv
    )
    for name in ('pre_attention_layer_norm', 'pre_mlp_layer_norm'):
      mapping[(lyr, name, 'scale')] = _Mapped(get(f'{p}/{name}/scale'))
    for w in ('wi_0', 'wi_1', 'wo'):
      mapping[(lyr, 'mlp', w, 'kernel')] = _Mapped(get(f'{p}/mlp/{w}/kernel'))
  return mapping


def _materialise(
  mapping: Mapping[tuple[str, ...], _Mapped], config: T5Config, mesh: Mesh | None, rules, dtype
) -> dict:
  """Builds each parameter in its final sharding, one array at a time."""
  if mesh is None:
    mesh = Mesh(np.array(jax.devices()[:1]), ('data',))
  dtype = jax.numpy.dtype(dtype)
  out: dict = {}
  for path, leaf in _abstract_leaves(config).items():
    src, expected = mapping[path], tuple(leaf.value.shape)
    if tuple(src.shape) != expected:
      raise CheckpointError(
        f'{src.tensor.name} has shape {src.tensor.shape}, which does not fit '
        f'{"/".join(path)} {expected} of {config}.'
      )
    sharding = logical_sharding(leaf.names, expected, mesh, rules)
    cache: dict = {}  # Replicated shards ask for the same slice: read it once.

    def read(index, src=src, cache=cache):
      key = tuple((s.start, s.stop) for s in index)
      if key not in cache:
        cache[key] = np.ascontiguousarray(src[index]).astype(dtype)
      return cache[key]

    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = jax.make_array_from_callback(expected, sharding, read)
  return out


# ---------------------------------------------------------------------------------
# Hugging Face (safetensors).
# ---------------------------------------------------------------------------------
def _refuse_pickles(directory: str) -> None:
  pickles = [
    p
    for p in sorted(glob.glob(os.path.join(directory, '*')))
    if p.endswith(PICKLE_SUFFIXES) or '.bin.index' in p
  ]
  raise CheckpointError(pickle_refusal(pickles))


def load_hf(
  directory: str, *, mesh: Mesh | None = None, rules=None, dtype=np.float32
) -> tuple[T5Config, dict]:
  """Reads a Hugging Face T5 (v1.1) directory's encoder into sharded jax arrays."""
  from safetensors import safe_open  # Local import: only this reader needs it.

  cfg_path = os.path.join(directory, 'config.json')
  if not os.path.isfile(cfg_path):
    raise CheckpointError(
      f'{directory} has no config.json; is it a Hugging Face model '
      'directory (save_pretrained output)?'
    )
  index = os.path.join(directory, 'model.safetensors.index.json')
  if os.path.isfile(index):
    with open(index) as f:
      weight_map = json.load(f)['weight_map']
  else:
    files = sorted(glob.glob(os.path.join(directory, '*.safetensors')))
    if not files:
      if any(p.endswith(PICKLE_SUFFIXES) for p in os.listdir(directory)):
        _refuse_pickles(directory)
      raise CheckpointError(
        f'{directory} has config.json but no *.safetensors file. Download the '
        'safetensors weights (e.g. `huggingface-cli download REPO --include "*.json" '
        '"*.safetensors" spiece.model`); Flax/TF/PyTorch files are not read.'
      )
    weight_map = {}
    for path in files:
      with safe_open(path, framework='numpy') as h:
        weight_map.update({k: os.path.basename(path) for k in h.keys()})
  with open(cfg_path) as f:
    config = T5Config.from_hf_config(json.load(f))
  handles: dict = {}

  def get(*names: str) -> _Tensor:
    for name in names:
      if name in weight_map:
        break
    else:
      raise CheckpointError(
        f'{directory} lacks tensor {names[0]!r}; is it a T5 v1.1 '
        f'encoder with {config.num_layers} layers?'
      )
    fname = weight_map[name]
    if fname not in handles:
      handles[fname] = safe_open(os.path.join(directory, fname), framework='numpy')
    sl = handles[fname].get_slice(name)
    return _Tensor(name, tuple(sl.get_shape()), lambda idx, sl=sl: sl[idx])

  try:
    params = _materialise(_hf_layout(config, get), config, mesh, rules, dtype)
  finally:
    handles.clear()
  return config, params


# ---------------------------------------------------------------------------------
# T5X (msgpack + TensorStore zarr arrays).
# ---------------------------------------------------------------------------------
def find_t5x_checkpoint(path: str) -> str | None:
  """`path` itself if it holds a T5X `checkpoint` file, else its latest checkpoint_N."""
  if os.path.isfile(os.path.join(path, 'checkpoint')):
    return path
  steps = [
    (int(m.group(1)), d)
    for d in glob.glob(os.path.join(path, 'checkpoint_*'))
    if (m := re.search(r'checkpoint_(\d+)$', d)) and os.path.isfile(os.path.join(d, 'checkpoint'))
  ]
  return max(steps)[1] if steps else None


def _flatten(tree, prefix=()):
  if isinstance(tree, dict) and not _is_ts_spec(tree):
    for k, v in tree.items():
      yield from _flatten(v, prefix + (str(k),))
  else:
    yield '/'.join(prefix), tree


def _is_ts_spec(x) -> bool:
  return isinstance(x, dict) and 'driver' in x and ('kvstore' in x or 'path' in x)


def _ts_tensor(name: str, spec: dict, directory: str) -> _Tensor:
  import tensorstore as ts  # Local import: only this reader needs it.

  spec = json.loads(json.dumps(spec))
  # The zarr metadata on disk is authoritative; the copy in the msgpack only has to
  # agree with it, and a harmless difference (chunk layout) must not stop a read.
  spec.pop('metadata', None)
  # Published checkpoints were written to GCS with a dummy bucket and relative paths;
  # a downloaded copy is read from local files (what T5X itself does on restore).
  kv = spec.get('kvstore')
  if isinstance(kv, dict):
    spec['kvstore'] = {'driver': 'file', 'path': os.path.join(directory, kv['path'])}
  else:  # tensorstore < 0.1.14 layout: {'path': ..., 'kvstore': {'driver': ...}}.
    spec['kvstore'] = {'driver': 'file', 'path': os.path.join(directory, spec.pop('path'))}
  try:
    store = ts.open(spec, open=True, read=True).result()
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
      f'Cannot open TensorStore array {name} ({spec["kvstore"]}): {e}'
    ) from None
  return _Tensor(name, tuple(store.shape), lambda idx: store[idx].read().result())


def _infer_t5x_config(arrays: Mapping[str, Any], overrides: Mapping[str, Any]) -> T5Config:
  def shape(key):
    v = arrays[key]
    return tuple(v['metadata']['shape']) if _is_ts_spec(v) else tuple(np.shape(v))

  layers = {int(m.group(1)) for k in arrays if (m := re.match(r'encoder/layers_(\d+)/', k))}
  if 'encoder/layers_0/mlp/wi/kernel' in arrays:
    raise CheckpointError(
      'This T5X checkpoint has a non-gated MLP (T5 1.0); only T5 v1.1 (wi_0/wi_1) is supported.'
    )
  vocab, d_model = shape('token_embedder/embedding')
  heads, buckets = shape('encoder/relpos_bias/rel_embedding')
  inner = shape('encoder/layers_0/attention/query/kernel')[1]
  d_ff = shape('encoder/layers_0/mlp/wi_0/kernel')[1]
  fields = dict(
    vocab_size=vocab,
    d_model=d_model,
    num_layers=len(layers),
    num_heads=heads,
    d_kv=inner // heads,
    d_ff=d_ff,
    relative_attention_num_buckets=buckets,
  )
  return T5Config(**{**fields, **overrides})


def load_t5x(
  path: str, *, mesh: Mesh | None = None, rules=None, dtype=np.float32, **config_overrides
) -> tuple[T5Config, dict]:
  """Reads the encoder of a T5X T5 v1.1 checkpoint into sharded jax arrays.

  The config is inferred from array shapes; `relative_attention_max_distance` (not
  stored by T5X, 128 for all published models) can be overridden.
  """
  from flax import serialization

  directory = find_t5x_checkpoint(path)
  if directory is None:
    raise CheckpointError(f'{path} holds no T5X `checkpoint` file (nor checkpoint_N/).')
  with open(os.path.join(directory, 'checkpoint'), 'rb') as f:
    # msgpack with flax's ndarray extension only: no code can run while decoding.
    state = serialization.msgpack_restore(f.read())
  target = state.get('optimizer', state).get('target')
  if not isinstance(target, dict) or 'encoder' not in target:
    raise CheckpointError(f'{directory}/checkpoint has no target/encoder parameters.')
  arrays = dict(_flatten(target))
  try:
    config = _infer_t5x_config(arrays, config_overrides)
  except KeyError as e:
    raise CheckpointError(f'{directory} lacks T5 v1.1 encoder array target/{e.args[0]}.') from None

  def get(name: str) -> _Tensor:
    if name not in arrays:
      raise CheckpointError(f'{directory} lacks array target/{name}.')
    value = arrays[name]
    if _is_ts_spec(value):
      return _ts_tensor(f'target/{name}', value, directory)
    value = np.asarray(value)
    return _Tensor(f'target/{name}', value.shape, lambda idx: value[idx])

  return config, _materialise(_t5x_layout(config, get), config, mesh, rules, dtype)


# ---------------------------------------------------------------------------------
# Dispatch, orbax output, loading.
# ---------------------------------------------------------------------------------
def load_source(
  source: str, *, mesh: Mesh | None = None, rules=None, dtype=np.float32, **t5x_overrides
) -> tuple[T5Config, dict]:
  """Reads a HF directory or a T5X checkpoint (detected from its files)."""
  if os.path.isfile(source):
    if source.endswith(PICKLE_SUFFIXES):
      raise CheckpointError(pickle_refusal([source]))
    source = os.path.dirname(source) or '.'
  if not os.path.isdir(source):
    raise CheckpointError(f'{source} does not exist.')
  if os.path.isfile(os.path.join(source, 'config.json')):
    return load_hf(source, mesh=mesh, rules=rules, dtype=dtype)
  if find_t5x_checkpoint(source):
    return load_t5x(source, mesh=mesh, rules=rules, dtype=dtype, **t5x_overrides)
  if any(n.endswith(PICKLE_SUFFIXES) for n in os.listdir(source)):
    _refuse_pickles(source)
  raise CheckpointError(
    f'{source} is neither a Hugging Face T5 directory (config.json + *.safetensors) '
    'nor a T5X checkpoint (a `checkpoint` file + arrays, or checkpoint_N/).'
  )


def save_t5(
  directory: str, config: T5Config, params, *, vocab: str | None = None, source: str | None = None
) -> str:
  """Writes `params` as an orbax checkpoint plus the config JSON (and vocabulary)."""
  import orbax.checkpoint as ocp

  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, PARAMS_DIR), params)
    ckptr.wait_until_finished()
  if jax.process_index() == 0:
    dtype = str(jax.tree.leaves(params)[0].dtype)
    meta = {'format': FORMAT, 't5': config.to_dict(), 'param_dtype': dtype, 'source': source}
    with open(os.path.join(directory, CONFIG_FILE), 'w') as f:
      json.dump(meta, f, indent=2)
    if vocab:
      shutil.copyfile(vocab, os.path.join(directory, VOCAB_FILE))
  return directory


def read_config(directory: str) -> tuple[T5Config, dict]:
  """The T5Config and metadata saved by `save_t5`."""
  path = os.path.join(directory, CONFIG_FILE)
  if not os.path.isdir(directory):
    raise CheckpointError(f'{directory} does not exist.')
  if not os.path.isfile(path):
    raise CheckpointError(
      f'{directory} has no {CONFIG_FILE}; convert a checkpoint '
      'with `python -m imagen_video_jax.convert_t5` first.'
    )
  with open(path) as f:
    meta = json.load(f)
  return T5Config.from_dict(meta['t5']), meta


def load_t5(
  directory: str,
  *,
  mesh: Mesh | None = None,
  rules=None,
  dtype=None,
  compute_dtype: str | None = None,
) -> tuple[T5Config, dict]:
  """Restores a converted encoder: `(T5Config, params)`, params in their shardings.

  `dtype` casts the stored parameters on load; `compute_dtype` ('float32' or
  'bfloat16') overrides the config's activation dtype.
  """
  import orbax.checkpoint as ocp

  directory = os.path.abspath(directory)
  config, meta = read_config(directory)
  if compute_dtype:
    config = dataclasses.replace(config, dtype=compute_dtype)
  dtype = np.dtype(dtype or meta.get('param_dtype', 'float32'))
  target = jax.tree.map(
    lambda p, s: jax.ShapeDtypeStruct(p.value.shape, dtype, sharding=s),
    abstract_params(config),
    param_shardings(config, mesh, rules),
    is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned),
  )
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.join(directory, PARAMS_DIR), target)
  return config, params


def vocab_path(directory: str) -> str | None:
  """The SentencePiece model stored next to a converted encoder, if any."""
  path = os.path.join(directory, VOCAB_FILE)
  return path if os.path.isfile(path) else None
