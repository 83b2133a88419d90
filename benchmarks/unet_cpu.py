r"""Times our VideoUNet on the CPU, side by side with an imagen-pytorch Unet3D harness.

    .venv/bin/python benchmarks/unet_cpu.py --config=digits-base --iters=5 --warmup=2
    .venv/bin/python benchmarks/unet_cpu.py --config_json='{"unet": {...}, "frames": 8,
        "size": 16, "batch": 8}'       # any UNetConfig (UNetConfig.to_dict() form)
    .venv/bin/python benchmarks/unet_cpu.py --config=digits-base --count_only

Prints ONE JSON line: params, compile seconds, train step (forward + backward + AdamW,
the project's diffusion_loss) and a classifier-free-guided denoiser call (cond + uncond
as ONE forward at batch 2B, as our sampler does); median / min over --iters runs.
The configs mirror the peer's reference runs (benchmarks/BENCHMARKS.md) in size; the
architectures differ (see `CONFIGS`), so compare per-parameter and per-FLOP as well.
`benchmarks/compare_peer.py` runs this with configurations matched to the peer's.

Also reported: `fwd_flops_B`, XLA's cost analysis (HloCostAnalysis of the lowered,
not yet optimised program) of ONE forward at batch B; `cfg_fwd_flops_2B`, the same of the
compiled guided forward at 2B; peak RSS of the whole process (`ru_maxrss`, XLA's
compiles included) after compiling, after the train-step runs and after the guided-forward
runs; the glibc MALLOC_* variables in force. `--count_only` stops after params and
`fwd_flops_B` (nothing is compiled or timed).
"""

import argparse
import json
import os
import resource
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from imagen_video_jax.diffusion import objectives
from imagen_video_jax.models import unet as unet_lib
from imagen_video_jax.models.unet import LevelConfig as L

# name -> (UNetConfig, frames, size, batch). Channels follow the peer's dims [D, D*m...];
# per-frame spatial attention (the peer's joint F*H*W attention is a different operator).
CONFIGS = {
  'digits-base': (
    unet_lib.UNetConfig(
      levels=(
        L(64, 2, temporal='attention', cross_attention=True),
        L(128, 2, spatial_attention=True, cross_attention=True, temporal='attention'),
        L(256, 2, spatial_attention=True, cross_attention=True, temporal='attention'),
      ),
      text_dim=64,
      emb_dim=256,
    ),
    8,
    16,
    8,
  ),
  'digits-ssr': (
    unet_lib.UNetConfig(
      levels=(
        L(32, 2, temporal='conv', cross_attention=True),
        L(64, 2, temporal='conv', cross_attention=True),
        L(128, 2, temporal='conv', cross_attention=True),
      ),
      text_dim=64,
      emb_dim=128,
      cond_channels=3,
      cond_augment=True,
    ),
    16,
    32,
    4,
  ),
  'micro': (
    unet_lib.UNetConfig(
      levels=(L(64, 1, spatial_attention=True, temporal='attention'),), emb_dim=256
    ),
    8,
    32,
    2,
  ),
}


def _time(fn, warmup, iters):
  for _ in range(warmup):
    jax.block_until_ready(fn())
  ts = []
  for _ in range(iters):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    ts.append(time.perf_counter() - t)
  return {
    'median_s': statistics.median(ts),
    'min_s': min(ts),
    'n': iters,
    'warmup': warmup,
    'all_s': [round(x, 4) for x in ts],
  }


def _peak_rss_mb():
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def _load_config_json(text):
  """--config_json: a JSON object, or @path of a file holding one.

  Keys: 'unet' (UNetConfig.to_dict() form), 'frames', 'size', 'batch', optional 'label'.
  """
  if text.startswith('@'):
    with open(text[1:]) as f:
      text = f.read()
  d = json.loads(text)
  cfg = unet_lib.UNetConfig.from_dict(d['unet'])
  return d.get('label', 'config_json'), (cfg, int(d['frames']), int(d['size']), int(d['batch']))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--config', default='digits-base', choices=sorted(CONFIGS))
  ap.add_argument('--warmup', type=int, default=2)
  ap.add_argument('--iters', type=int, default=5)
  ap.add_argument('--text-len', type=int, default=32)
  ap.add_argument(
    '--config_json',
    default=None,
    help='a UNetConfig and shape as JSON (or @file), instead of --config; see _load_config_json',
  )
  ap.add_argument(
    '--count_only', action='store_true', help='params and fwd_flops_B only: no compile, no timing'
  )
  args = ap.parse_args()
  if args.config_json:
    label, (cfg, t, s, b) = _load_config_json(args.config_json)
  else:
    label, (cfg, t, s, b) = args.config, CONFIGS[args.config]
  model = unet_lib.VideoUNet(cfg)
  params = nn.unbox(unet_lib.init_params(cfg, jax.random.key(0), frames=t, height=s, width=s))
  n_params = sum(p.size for p in jax.tree.leaves(params))
  k = jax.random.split(jax.random.key(1), 4)
  x = jax.random.normal(k[0], (b, t, s, s, 3))
  text = jax.random.normal(k[1], (b, args.text_len, cfg.text_dim)) if cfg.text_dim else None
  mask = jnp.ones((b, args.text_len), bool) if cfg.text_dim else None
  cond = jax.random.normal(k[2], x.shape) if cfg.cond_channels else None
  cl = jnp.zeros((b,)) if cfg.cond_augment else None
  fwd_flops_b = (
    jax.jit(lambda p: model.apply({'params': p}, x, jnp.zeros((b,)), text, mask, None, cond, cl))
    .lower(params)
    .cost_analysis()
    or {}
  ).get('flops')
  res = {
    'harness': 'imagen_video_jax/benchmarks/unet_cpu.py',
    'label': label,
    'jax': jax.__version__,
    'backend': jax.default_backend(),
    'cpu_count': os.cpu_count(),
    'frames': t,
    'size': s,
    'batch': b,
    'text_len': args.text_len,
    'params': int(n_params),
    'fwd_flops_B': fwd_flops_b,
    'unet': cfg.to_dict(),
    'malloc_env': {k: v for k, v in os.environ.items() if k.startswith('MALLOC_')},
  }
  if args.count_only:
    print(json.dumps(res))
    return
  dcfg = objectives.DiffusionConfig()
  opt = optax.adamw(1e-4)
  opt_state = opt.init(params)

  def loss_fn(p, key):
    kd, kl = jax.random.split(key)
    e, m = objectives.drop_text(kd, text, mask, 0.1) if text is not None else (None, None)
    apply = lambda z, l: model.apply({'params': p}, z, l, e, m, None, cond, cl)
    return objectives.diffusion_loss(apply, x, kl, config=dcfg)[0]

  @jax.jit
  def train_step(p, s_, key):
    loss, g = jax.value_and_grad(loss_fn)(p, key)
    u, s_ = opt.update(g, s_, p)
    return optax.apply_updates(p, u), s_, loss

  def cfg_fn(p):
    e2 = None if text is None else jnp.concatenate([text, jnp.zeros_like(text)])
    m2 = None if mask is None else jnp.concatenate([mask, jnp.zeros_like(mask)])
    c2 = None if cond is None else jnp.concatenate([cond, cond])
    cl2 = None if cl is None else jnp.concatenate([cl, cl])
    out = model.apply(
      {'params': p}, jnp.concatenate([x, x]), jnp.zeros((2 * b,)), e2, m2, None, c2, cl2
    )
    c, u = jnp.split(out, 2)
    return u + 5.0 * (c - u)

  cfg_jit = jax.jit(cfg_fn)

  t0 = time.perf_counter()
  train_c = train_step.lower(params, opt_state, k[3]).compile()
  compile_train = time.perf_counter() - t0
  t0 = time.perf_counter()
  cfg_c = cfg_jit.lower(params).compile()
  compile_cfg = time.perf_counter() - t0
  flops = (cfg_c.cost_analysis() or {}).get('flops') if hasattr(cfg_c, 'cost_analysis') else None
  state = {'p': params, 's': opt_state}

  def one_train():
    state['p'], state['s'], loss = train_c(state['p'], state['s'], k[3])
    return loss

  rss = {'after_compile': _peak_rss_mb()}
  res.update(cfg_fwd_flops_2B=flops, compile_train_s=compile_train, compile_cfg_s=compile_cfg)
  res['train_step'] = _time(one_train, args.warmup, args.iters)
  rss['after_train'] = _peak_rss_mb()
  res['cfg_batched'] = _time(lambda: cfg_c(params), args.warmup, args.iters)
  rss['after_cfg'] = _peak_rss_mb()
  res['peak_rss_mb'] = rss
  print(json.dumps(res))


if __name__ == '__main__':
  main()
