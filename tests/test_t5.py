"""T5 v1.1 encoder: config, numerical parity with transformers, HF and T5X loading.

The reference is `transformers`' PyTorch `T5EncoderModel`, randomly initialised at
small sizes whose relative-position buckets are few enough (and sequences long
enough) that the logarithmic buckets and the max-distance clamp are exercised.
"""

import json
import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_util import run_module

from imagen_video_jax.models.layers import relative_position_bucket
from imagen_video_jax.models.t5 import T5Config, T5Encoder, abstract_params, init_params
from imagen_video_jax.text import checkpoints
from imagen_video_jax.text.tokenizer import Tokenizer, train_sentencepiece

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

# Two shapes: (a) few buckets, short max_distance, inner dim == d_model, one file;
# (b) default buckets, sequence past max_distance, inner dim != d_model, sharded files.
SHAPES = {
  'a': dict(
    vocab_size=160,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=3,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=12,
  ),
  'b': dict(
    vocab_size=77,
    d_model=48,
    d_kv=12,
    d_ff=64,
    num_layers=2,
    num_heads=6,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
  ),
}
LENGTHS = {'a': 40, 'b': 150}
CAPTIONS = [
  'a red 3 moving left',
  'a green 7',
  'a blue 0 moving up',
  'a white 9',
  'a cyan 4 moving down',
  'a magenta 2 moving right',
  'a yellow 5',
]


def hf_model(name):
  torch.manual_seed(0)
  cfg = transformers.T5Config(
    **SHAPES[name], feed_forward_proj='gated-gelu', is_encoder_decoder=False, use_cache=False
  )
  return transformers.T5EncoderModel(cfg).eval()


@pytest.fixture(scope='module')
def sp_model(tmp_path_factory):
  path = tmp_path_factory.mktemp('sp') / 'digits.model'
  return Tokenizer(train_sentencepiece(CAPTIONS * 4, str(path), vocab_size=64))


@pytest.fixture(scope='module', params=['a', 'b'])
def hf_dir(request, tmp_path_factory):
  model = hf_model(request.param)
  path = tmp_path_factory.mktemp(f'hf_{request.param}')
  # (b) is saved in several shards, exercising model.safetensors.index.json.
  model.save_pretrained(path, max_shard_size='20KB' if request.param == 'b' else '1GB')
  return request.param, model, str(path)


def batch(name, tok):
  """Real token batches with padding; (b) adds rows longer than max_distance."""
  length = LENGTHS[name]
  t = tok(CAPTIONS + ['a red 3 moving left ' * 8], max_length=length)
  ids, mask = t.ids, t.mask
  if name == 'b':
    rng = np.random.default_rng(1)
    long_ids = rng.integers(3, SHAPES['b']['vocab_size'], size=(2, length)).astype(np.int32)
    long_mask = np.ones((2, length), bool)
    long_mask[1, 140:] = False
    long_ids[~long_mask] = 0
    ids, mask = np.concatenate([ids, long_ids]), np.concatenate([mask, long_mask])
  return ids, mask


def reference(model, ids, mask):
  with torch.no_grad():
    return model(
      input_ids=torch.tensor(ids, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
    ).last_hidden_state.numpy()


def ours(config, params, ids, mask):
  return np.asarray(
    T5Encoder(config).apply({'params': params}, jnp.asarray(ids), jnp.asarray(mask))
  )


def test_named_configs():
  xxl = T5Config.from_name('xxl')
  assert (xxl.d_model, xxl.num_layers, xxl.num_heads, xxl.d_kv, xxl.d_ff, xxl.vocab_size) == (
    4096,
    24,
    64,
    64,
    10240,
    32128,
  )
  assert 4.5e9 < xxl.num_params() < 4.8e9  # Imagen: "4.6B frozen T5-XXL".
  assert set(T5Config.names()) >= {'small', 'base', 'large', 'xl', 'xxl'}
  for name in ('small', 'base'):  # Parameter count matches the real module's tree.
    cfg = T5Config.from_name(name)
    n = sum(
      int(np.prod(p.value.shape))
      for p in jax.tree.leaves(abstract_params(cfg), is_leaf=lambda x: hasattr(x, 'names'))
    )
    assert n == cfg.num_params()
  assert T5Config.from_dict(json.loads(xxl.to_json())) == xxl


@pytest.mark.parametrize(
  'bad, match',
  [
    (dict(d_model=0), 'd_model'),
    (dict(dtype='float16'), 'dtype'),
    (dict(relative_attention_num_buckets=7), 'even'),
    (dict(relative_attention_max_distance=2), 'max_distance'),
  ],
)
def test_config_validation(bad, match):
  with pytest.raises(ValueError, match=match):
    T5Config.from_name('tiny', **bad)
  with pytest.raises(ValueError, match='Unknown T5 size'):
    T5Config.from_name('huge')


def test_from_hf_config_refuses_other_models():
  base = dict(vocab_size=10, d_model=8, num_layers=1, num_heads=2, d_kv=4, d_ff=8)
  with pytest.raises(ValueError, match='T5 1.0'):
    T5Config.from_hf_config({**base, 'feed_forward_proj': 'relu'})
  with pytest.raises(ValueError, match='umt5'):
    T5Config.from_hf_config({**base, 'feed_forward_proj': 'gated-gelu', 'model_type': 'umt5'})


def test_logical_axis_names():
  tree = abstract_params(T5Config.from_name('tiny'))
  names = lambda *p: _get(tree, p).names
  assert names('token_embedder', 'embedding') == ('vocab', 'embed')
  assert names('layers_0', 'attention', 'query', 'kernel') == ('embed', 'heads', 'kv')
  assert names('layers_0', 'attention', 'out', 'kernel') == ('heads', 'kv', 'embed')
  assert names('layers_1', 'mlp', 'wo', 'kernel') == ('mlp', 'embed')
  assert 'relpos_bias' in tree and 'relpos_bias' not in tree['layers_1']  # shared.


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def test_relative_position_bucket_matches_hf():
  rel = np.arange(-300, 300)
  for nb, md in ((8, 12), (32, 128)):
    want = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(
      torch.tensor(rel), bidirectional=True, num_buckets=nb, max_distance=md
    ).numpy()
    got = relative_position_bucket(jnp.asarray(rel), num_buckets=nb, max_distance=md)
    np.testing.assert_array_equal(np.asarray(got), want)


def test_hf_parity_float32(hf_dir, sp_model):
  name, model, path = hf_dir
  config, params = checkpoints.load_source(path)
  assert config == T5Config(**SHAPES[name])
  ids, mask = batch(name, sp_model)
  assert not mask.all(1).all() and mask.all(1).any()  # padded and full rows
  want, got = reference(model, ids, mask), ours(config, params, ids, mask)
  assert np.abs(got - want)[mask].max() <= 1e-4
  assert np.abs(got - want).max() <= 1e-4  # Same masking as HF: padded rows too.


def test_bfloat16_compute_is_close(hf_dir, sp_model):
  name, model, path = hf_dir
  config, params = checkpoints.load_source(path, dtype='bfloat16')
  assert jax.tree.leaves(params)[0].dtype == jnp.bfloat16
  ids, mask = batch(name, sp_model)
  got = ours(T5Config(**SHAPES[name], dtype='bfloat16'), params, ids, mask)
  want = reference(model, ids, mask)
  assert got.dtype == jnp.bfloat16
  err = np.abs(got.astype(np.float32) - want)[mask]
  assert err.mean() < 0.05 * np.abs(want[mask]).mean()


def test_missing_tensor_and_wrong_shape_are_reported(tmp_path):
  from safetensors.numpy import load_file, save_file

  model = hf_model('a')
  model.save_pretrained(tmp_path)
  tensors = load_file(tmp_path / 'model.safetensors')
  del tensors['encoder.block.2.layer.1.DenseReluDense.wo.weight']
  save_file(tensors, tmp_path / 'model.safetensors')
  with pytest.raises(checkpoints.CheckpointError, match=r'block\.2\.layer\.1'):
    checkpoints.load_source(str(tmp_path))
  cfg = json.loads((tmp_path / 'config.json').read_text())
  (tmp_path / 'config.json').write_text(json.dumps({**cfg, 'num_layers': 2, 'd_ff': 40}))
  with pytest.raises(checkpoints.CheckpointError, match='does not fit'):
    checkpoints.load_source(str(tmp_path))


# --- T5X ---------------------------------------------------------------------------
def write_t5x(directory, model, config):
  """Writes `model`'s weights in the layout of the published T5X t5_1_1 checkpoints.

  `checkpoint_N/checkpoint` is flax msgpack of {'version': 3, 'optimizer': {'target':
  params, 'state': {...}}} whose arrays are TensorStore specs of gzip zarr arrays named
  like `target.encoder.layers_0.attention.query.kernel`, relative to the directory
  (t5x/checkpoints.py). Kernels are 2-D [in, out] (t5x/examples/t5/layers.py
  DenseGeneral); T5X folds d_kv**-0.5 into the query weights exactly as HF does, so
  its query kernel is HF's q.weight transposed, unscaled.
  """
  import tensorstore as ts
  from flax import serialization

  ckpt = os.path.join(directory, 'checkpoint_1000000')
  os.makedirs(ckpt)
  sd = {k: v.numpy() for k, v in model.state_dict().items()}

  def spec(name, arr, gcs=False):
    rel = name.replace('/', '.')
    meta = {'chunks': list(arr.shape), 'compressor': {'id': 'gzip'}, 'shape': list(arr.shape)}
    store = ts.open(
      {
        'driver': 'zarr',
        'dtype': 'float32',
        'metadata': meta,
        'kvstore': {'driver': 'file', 'path': os.path.join(ckpt, rel)},
      },
      create=True,
    ).result()
    store.write(arr.astype(np.float32)).result()
    # Published checkpoints were written to GCS with a dummy bucket.
    kv = (
      {'driver': 'gcs', 'bucket': 't5x-dummy-bucket', 'path': rel}
      if gcs
      else {'driver': 'file', 'path': rel}
    )
    return {'driver': 'zarr', 'dtype': 'float32', 'kvstore': kv, 'metadata': meta}

  b = 'encoder.block'
  enc = {
    'relpos_bias': {
      'rel_embedding': spec(
        'target/encoder/relpos_bias/rel_embedding',
        sd[f'{b}.0.layer.0.SelfAttention.relative_attention_bias.weight'].T,
      )
    },
    'encoder_norm': {
      'scale': spec('target/encoder/encoder_norm/scale', sd['encoder.final_layer_norm.weight'])
    },
  }
  for i in range(config.num_layers):
    p = f'target/encoder/layers_{i}'
    att = {
      n: {
        'kernel': spec(
          f'{p}/attention/{n}/kernel', sd[f'{b}.{i}.layer.0.SelfAttention.{h}.weight'].T, gcs=i == 0
        )
      }
      for n, h in (('query', 'q'), ('key', 'k'), ('value', 'v'), ('out', 'o'))
    }
    mlp = {
      w: {'kernel': spec(f'{p}/mlp/{w}/kernel', sd[f'{b}.{i}.layer.1.DenseReluDense.{w}.weight'].T)}
      for w in ('wi_0', 'wi_1', 'wo')
    }
    enc[f'layers_{i}'] = {
      'attention': att,
      'mlp': mlp,
      'pre_attention_layer_norm': {
        'scale': spec(
          f'{p}/pre_attention_layer_norm/scale', sd[f'{b}.{i}.layer.0.layer_norm.weight']
        )
      },
      'pre_mlp_layer_norm': {
        'scale': spec(f'{p}/pre_mlp_layer_norm/scale', sd[f'{b}.{i}.layer.1.layer_norm.weight'])
      },
    }
  rng = np.random.default_rng(0)
  target = {
    'token_embedder': {'embedding': spec('target/token_embedder/embedding', sd['shared.weight'])},
    'encoder': enc,
    # A decoder and Adafactor state, as in the real files; the reader ignores them.
    'decoder': {
      'decoder_norm': {'scale': spec('target/decoder/decoder_norm/scale', np.ones(config.d_model))},
      'logits_dense': {
        'kernel': spec(
          'target/decoder/logits_dense/kernel', rng.normal(size=(config.d_model, config.vocab_size))
        )
      },
    },
  }
  state = {
    'step': np.int32(1000000),
    'param_states': {
      'encoder': {
        'encoder_norm': {
          'scale': {
            'v': spec('state/param_states/encoder/encoder_norm/scale/v', np.ones(config.d_model))
          }
        }
      }
    },
  }
  with open(os.path.join(ckpt, 'checkpoint'), 'wb') as f:
    f.write(
      serialization.msgpack_serialize(
        {'version': 3, 'optimizer': {'target': target, 'state': state}}
      )
    )
  return ckpt


def test_t5x_checkpoint_loads_to_the_same_outputs(tmp_path, sp_model):
  model = hf_model('a')
  config = T5Config(**SHAPES['a'])
  write_t5x(str(tmp_path), model, config)
  # The parent folder works too: the latest checkpoint_N is found.
  got_config, params = checkpoints.load_source(
    str(tmp_path), relative_attention_max_distance=config.relative_attention_max_distance
  )
  assert got_config == config
  ids, mask = batch('a', sp_model)
  err = np.abs(ours(config, params, ids, mask) - reference(model, ids, mask))
  assert err[mask].max() <= 1e-4


def test_convert_cli_round_trips_through_orbax(tmp_path, sp_model):
  import subprocess
  import sys

  model, path = hf_model('a'), str(tmp_path / 'hf')
  model.save_pretrained(path)
  out = tmp_path / 'converted'
  proc = run_module('convert_t5', f'--source={path}', f'--output={out}', '--compute_dtype=float32')
  assert proc.returncode == 0, proc.stderr
  assert 'Wrote a' in proc.stdout
  config, params = checkpoints.load_t5(str(out))
  assert config == T5Config(**SHAPES['a'])
  ids, mask = batch('a', sp_model)
  assert np.abs(ours(config, params, ids, mask) - reference(model, ids, mask))[mask].max() <= 1e-4
  # A second run refuses to clobber the output.
  again = subprocess.run(
    [sys.executable, '-m', 'imagen_video_jax.convert_t5', f'--source={path}', f'--output={out}'],
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert again.returncode != 0 and 'not empty' in again.stderr
  assert 'Traceback' not in again.stderr


def test_save_and_load_random_params(tmp_path):
  config = T5Config.from_name('tiny', vocab_size=50)
  params = init_params(config, 3)
  checkpoints.save_t5(str(tmp_path / 't5'), config, params)
  got_config, got = checkpoints.load_t5(str(tmp_path / 't5'))
  assert got_config == config
  jax.tree.map(np.testing.assert_array_equal, params, got)


def test_encode_text_computes_in_the_weights_dtype_by_default(tmp_path):
  """convert_t5 records bfloat16 activations by default, over float32 weights; encode_text
  still computes in float32 unless told otherwise, so its embeddings are transformers'
  up to the cache's own bfloat16 rounding (bfloat16 compute is several steps off)."""
  model, hf = hf_model('a'), str(tmp_path / 'hf')
  model.save_pretrained(hf)
  t5, vocab = tmp_path / 't5', str(tmp_path / 'sp.model')
  sp_model = Tokenizer(train_sentencepiece(CAPTIONS * 4, vocab, vocab_size=64))
  proc = run_module('convert_t5', f'--source={hf}', f'--output={t5}', f'--vocab={vocab}')
  assert proc.returncode == 0, proc.stderr
  assert checkpoints.read_config(str(t5))[0].dtype == 'bfloat16'  # the recorded default
  (tmp_path / 'captions.txt').write_text('\n'.join(CAPTIONS) + '\n')
  args = [f'--t5={t5}', f'--captions={tmp_path / "captions.txt"}', '--max_length=40']
  args += ['--print_npy=' + str(tmp_path / 'first.npy'), f'--print_count={len(CAPTIONS)}']
  proc = run_module('encode_text', *args, f'--output={tmp_path / "cache"}', '--noprogress')
  assert proc.returncode == 0, proc.stderr
  got = np.load(tmp_path / 'first.npy')
  t = sp_model(CAPTIONS, max_length=40)
  want = reference(model, t.ids, t.mask)
  rounded = np.asarray(jnp.asarray(want, jnp.bfloat16).astype(jnp.float32))
  ulp = np.abs(want) * 2.0**-7 + 1e-6  # one bfloat16 step (8 significant bits)
  assert np.all(np.abs(got - rounded)[t.mask] <= ulp[t.mask]), np.abs(got - want).max()
