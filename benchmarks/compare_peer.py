r"""Our VideoUNet against imagen-pytorch 2.1.0's Unet3D at MATCHED sizes, on the CPU.

    python benchmarks/compare_peer.py --rounds=3              # the comparison (~15 min)
    python benchmarks/compare_peer.py --rounds=1 --iters=2    # a short check
    python benchmarks/compare_peer.py --count_only            # params and FLOPs, no timing

Two shapes, each with one configuration of each network (`MATCHED`), chosen by measuring
params and forward FLOPs so that both land within 10% (params) and 15% (forward FLOPs at
batch B) of each other, with the same resolutions and the same kinds of layers:

* digits-base: batch 8, 8 frames of 16x16, text 32 tokens x 64. Levels at 16, 8 and 4
  px; per-frame spatial self-attention at 8 and 4 px; text cross-attention at every level;
  temporal self-attention (no temporal convolutions) at every level.
* digits-ssr: batch 4, 16 frames of 32x32, a 3-channel low-resolution video as conditioning
  (with its noise-augmentation level), text 32 x 64. Levels at 32, 16 and 8 px; no spatial
  self-attention; text cross-attention at every level; temporal convolutions (no temporal
  attention).

Each round times the peer, then ours, as separate processes, shape after shape, so the two
share whatever else the machine is doing. Our side runs `benchmarks/unet_cpu.py
--config_json=...`, so it times the model code as it is when this runs. The peer side runs
the separate imagen-pytorch harness `peer_unet3d.py` (`--peer_harness`) in its own venv
(`--peer_python`). Both get the same environment: every MALLOC_* variable removed, and
with `--malloc=tuned` the harness's glibc settings set for both.

Measured, per side: params; forward FLOPs at batch B (ours: XLA's cost analysis of the
lowered forward; the peer: torch.utils.flop_counter); the train step (forward, backward,
optimizer); the classifier-free-guided denoiser call (cond + uncond) as one forward at
batch 2B (both) and the peer's own sampler path, two forwards at batch B; peak RSS of the
process. Timings are pooled over all rounds: median and min of every timed run.
The Markdown table goes to stdout, every record and the summaries to
benchmarks/results/compare_peer_<date>.jsonl (appended; one 'run' line first with the
command).

Architectural differences that remain (the peer as imagen-pytorch 2.1.0 builds it, read
from imagen_video.py; `peer_unet3d.py --help` maps the flags):

1. Widths. The peer's level i has dims[i] channels with dims = [D, D*m1, ...], and its
   first multiplier must be 1 (its final ResnetBlock takes 2D channels), so its first two
   levels are equally wide; its middle block runs at the last level's resolution with
   D*mL channels. Base: peer 64/64/128 + a 256-wide middle at 4x4, ours 96/128/256.
   SSR: peer 32/32/64 + a 128-wide middle at 8x8, ours 48/80/160. Ours has no middle block.
2. Blocks. Both have 2 residual blocks per level on each side. The peer's are an "init"
   ResnetBlock plus one with a GlobalContext gate, each up block reading its own skip
   (two skips per level); ours are 2 ResBlocks with one skip per level (scaled 1/sqrt 2).
   The peer adds a CrossEmbed input layer (3x3, 7x7 and 15x15 convs) and a final
   ResnetBlock at full resolution; ours a 3x3 input conv and GroupNorm-SiLU-3x3 output.
   Peer: ChanRMSNorm, space-to-depth downsampling, pixel-shuffle upsampling; ours:
   GroupNorm, strided 3x3 convs, nearest upsampling + 3x3 conv.
3. Spatial attention (base only, both per frame: the peer's is regrouped per frame by the
   harness patch --spatial-attn-scope frame; natively it attends jointly over all frames).
   Peer: one TransformerBlock (attention + feed-forward) per level per side, plus one at
   the middle; multi-query, 8 heads x 64 at every width, also attending to the
   conditioning tokens. Ours: one attention in each block (4 per level), heads = C/64,
   no feed-forward.
4. Text cross-attention. Peer: once per level per side (in the init ResnetBlock) and in
   the middle blocks, to 36 Perceiver-resampled text tokens + 2 time tokens. Ours: in each
   block, to the 32 text tokens + a learned null token. Pooled text: peer mean pool into
   its time MLP; ours attention pooling into the conditioning vector.
5. Temporal layers. Base: peer temporal attention at the input, once per level per side
   and at the middle, causal, with an MLP position bias (the harness patch
   --temporal-mode attn removes its temporal convs and PEGs); ours temporal attention in
   each block, bidirectional, T5 bucketed bias. SSR: peer causal temporal conv (kernel 3)
   inside each pseudo-3D conv plus a depthwise temporal conv (PEG) per level per side
   (--temporal-mode conv removes its temporal attention); ours one GroupNorm-SiLU-temporal
   conv (kernel 3, C -> C) after each block.
6. SSR conditioning. Peer: the low-res video concatenated at the input and again before
   the final conv, its noise level through a second time MLP and 2 more time tokens.
   Ours: concatenated at the input only, its noise level embedded into the conditioning
   vector.
7. Training objective. Peer: eps-prediction MSE, Adam. Ours: the project's
   diffusion_loss (v-prediction), AdamW. Both drop the text for 10% of rows.
8. Counting. torch's flop counter counts matmuls, convolutions and attention only; XLA's
   cost analysis also counts elementwise work, so the same network reads a little higher
   on our side. Peak RSS is the whole process: ours includes XLA's compiles and jax
   itself, the peer's torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import pathlib
import shlex
import statistics
import subprocess
import sys
import time

from imagen_video_jax.models.unet import LevelConfig as L
from imagen_video_jax.models.unet import UNetConfig

ROOT = pathlib.Path(__file__).resolve().parents[1]
UNET_CPU = ROOT / 'benchmarks' / 'unet_cpu.py'
PARAMS_TOL = 0.10  # |ours / peer - 1| allowed for params
FLOPS_TOL = 0.15  # ... and for forward FLOPs at batch B
# peer_unet3d.py's --malloc tuned settings (glibc: keep freed memory in the heap).
MALLOC_TUNED = {
  'MALLOC_MMAP_THRESHOLD_': '33554432',
  'MALLOC_TRIM_THRESHOLD_': '17179869184',
  'MALLOC_TOP_PAD_': '1073741824',
}
TEXT_LEN, TEXT_DIM = 32, 64


@dataclasses.dataclass(frozen=True)
class Matched:
  """One shape, with our configuration and the peer's, and what each was measured at."""

  name: str
  batch: int
  frames: int
  size: int
  ours: UNetConfig
  peer_flags: tuple[str, ...]  # peer_unet3d.py flags for the architecture (not the shape)
  # As measured by `--count_only` (a run warns when what it measures differs):
  ours_params: int  # tests/test_compare_peer.py checks ours still has this many
  ours_gflop: float  # XLA cost analysis of the forward at batch B, GFLOP
  peer_params: int  # peer_unet3d.py's "params" (after the harness patches)
  peer_gflop: float  # peer_unet3d.py's "flops_fwd_batchB", GFLOP

  def shape_flags(self) -> list[str]:
    f = ['--batch', self.batch, '--frames', self.frames, '--size', self.size]
    f += ['--text-embed-dim', TEXT_DIM, '--text-len', TEXT_LEN]
    if self.ours.cond_channels:
      f += ['--cond-images', self.ours.cond_channels]
    return [str(x) for x in f]

  def ours_json(self) -> str:
    return json.dumps(
      {
        'label': f'{self.name}-matched',
        'unet': self.ours.to_dict(),
        'frames': self.frames,
        'size': self.size,
        'batch': self.batch,
      },
      separators=(',', ':'),
    )


MATCHED = {
  'digits-base': Matched(
    name='digits-base',
    batch=8,
    frames=8,
    size=16,
    ours=UNetConfig(
      levels=(
        L(96, 2, temporal='attention', cross_attention=True),
        L(128, 2, spatial_attention=True, cross_attention=True, temporal='attention'),
        L(256, 2, spatial_attention=True, cross_attention=True, temporal='attention'),
      ),
      text_dim=TEXT_DIM,
      emb_dim=256,
    ),
    peer_flags=(
      *('--dim', '64', '--dim-mults', '1,2,4', '--num-resnet-blocks', '1'),
      *('--layer-attns', '0,1,1', '--layer-cross-attns', '1,1,1', '--attend-at-middle', '1'),
      *('--spatial-attn-scope', 'frame', '--temporal-mode', 'attn'),
    ),
    ours_params=13_615_971,
    ours_gflop=65.3,
    peer_params=14_322_426,
    peer_gflop=67.7,
  ),
  'digits-ssr': Matched(
    name='digits-ssr',
    batch=4,
    frames=16,
    size=32,
    ours=UNetConfig(
      levels=(
        L(48, 2, temporal='conv', cross_attention=True),
        L(80, 2, temporal='conv', cross_attention=True),
        L(160, 2, temporal='conv', cross_attention=True),
      ),
      text_dim=TEXT_DIM,
      emb_dim=128,
      cond_channels=3,
      cond_augment=True,
    ),
    peer_flags=(
      *('--dim', '32', '--dim-mults', '1,2,4', '--num-resnet-blocks', '1'),
      *('--layer-attns', '0,0,0', '--layer-cross-attns', '1,1,1', '--attend-at-middle', '0'),
      *('--spatial-attn-scope', 'frame', '--temporal-mode', 'conv'),
    ),
    ours_params=4_527_251,
    ours_gflop=82.2,  # 84.0 before nearest up-sampling became a broadcast and reshape
    peer_params=4_415_051,
    peer_gflop=79.2,
  ),
}


def match_problems(shape, ours_params, ours_flops, peer_params, peer_flops) -> list[str]:
  """What is out of tolerance between the two sides (empty: matched)."""
  out = []
  for what, a, b, tol in (
    ('params', ours_params, peer_params, PARAMS_TOL),
    ('forward FLOPs', ours_flops, peer_flops, FLOPS_TOL),
  ):
    if not (a and b) or abs(a / b - 1) > tol:
      out.append(f'{shape}: {what} ours {a} vs peer {b} (more than {tol:.0%} apart)')
  return out


def recorded_differences(m: Matched, summary: dict) -> list[str]:
  """Where a run's params / forward FLOPs differ from those recorded in `m` (FLOPs: >1%)."""
  out = []
  for side, n, g in (('ours', m.ours_params, m.ours_gflop), ('peer', m.peer_params, m.peer_gflop)):
    got = summary.get(side) or {}
    if got.get('params') != n:
      out.append(f'{m.name} {side} params {got.get("params")} (recorded {n})')
    f = got.get('fwd_flops_B')
    if not f or abs(f / 1e9 / g - 1) > 0.01:
      out.append(f'{m.name} {side} forward GFLOP {(f or 0) / 1e9:.1f} (recorded {g})')
  return out


# ---- running one side --------------------------------------------------------------------


def side_env(malloc: str, base=None) -> dict[str, str]:
  """The environment of both sides: no MALLOC_* but the tuned ones when asked."""
  env = {k: v for k, v in (os.environ if base is None else base).items()}
  env = {k: v for k, v in env.items() if not k.startswith('MALLOC_')}
  if malloc == 'tuned':
    env.update(MALLOC_TUNED)
  env['HF_HUB_OFFLINE'] = '1'
  env['PYTHONPATH'] = os.pathsep.join([str(ROOT), *filter(None, [env.get('PYTHONPATH')])])
  return env


def ours_command(m: Matched, args, count_only=False) -> list[str]:
  cmd = [args.ours_python, str(UNET_CPU), f'--config_json={m.ours_json()}']
  cmd += [f'--text-len={TEXT_LEN}']
  if count_only:
    return [*cmd, '--count_only']
  return [*cmd, f'--warmup={args.warmup}', f'--iters={args.iters}']


def peer_command(m: Matched, args, count_only=False) -> list[str]:
  cmd = [args.peer_python, args.peer_harness, '--label', f'{m.name}-matched']
  cmd += [*m.peer_flags, *m.shape_flags()]
  if count_only:  # the harness always times; one untimed + one timed train step, no CFG
    return [*cmd, '--cfg', 'none', '--warmup', '0', '--iters', '1']
  return [*cmd, '--cfg', 'both', '--warmup', str(args.warmup), '--iters', str(args.iters)]


def run_json(cmd: list[str], env: dict[str, str], timeout: float) -> dict:
  """Runs one side; its last stdout line that is a JSON object (stderr passes through)."""
  t0 = time.perf_counter()
  p = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=timeout)
  lines = [x for x in p.stdout.splitlines() if x.startswith('{')]
  if p.returncode or not lines:
    raise RuntimeError(f'exit {p.returncode}, no JSON line from: {shlex.join(cmd)[:300]}')
  rec = json.loads(lines[-1])
  rec['process_wall_s'] = round(time.perf_counter() - t0, 2)
  return rec


def normalise(side: str, shape: str, rnd: int, rec: dict) -> dict:
  """One side's JSON line -> the fields the summary uses (the raw line kept under 'raw')."""

  def times(t):
    return list(t.get('all_s') or [t['median_s']]) if t else []

  rss = rec.get('peak_rss_mb') or {}
  if side == 'peer':
    out = {
      'params': rec['params'],
      'fwd_flops_B': rec.get('flops_fwd_batchB'),
      'train_s': times(rec.get('train_step_s')),
      'cfg_2B_s': times(rec.get('cfg_batched_s')),
      'cfg_2xB_s': times(rec.get('cfg_peer_s')),
    }
  else:
    out = {
      'params': rec['params'],
      'fwd_flops_B': rec.get('fwd_flops_B'),
      'train_s': times(rec.get('train_step')),
      'cfg_2B_s': times(rec.get('cfg_batched')),
      'cfg_2xB_s': [],
    }
  out.update(
    kind='record',
    side=side,
    shape=shape,
    round=rnd,
    peak_rss_mb=max(rss.values()) if rss else None,
    raw=rec,
  )
  return out


def strip_timings(rec: dict) -> dict:
  """--count_only: the peer harness times a train step even so; it is not a measurement."""
  rec.update(train_s=[], cfg_2B_s=[], cfg_2xB_s=[], peak_rss_mb=None)
  return rec


# ---- summary and table -------------------------------------------------------------------


def _stat(xs):
  return {'median_s': statistics.median(xs), 'min_s': min(xs), 'n': len(xs)} if xs else None


def summarise(shape: str, records: list[dict]) -> dict:
  """Pools one shape's records over the rounds: medians and mins of every timed run."""
  out = {'kind': 'summary', 'shape': shape}
  for side in ('peer', 'ours'):
    rs = [r for r in records if r['shape'] == shape and r['side'] == side]
    if not rs:
      out[side] = None
      continue
    rss = [r['peak_rss_mb'] for r in rs if r['peak_rss_mb'] is not None]
    out[side] = {
      'params': rs[-1]['params'],
      'fwd_flops_B': rs[-1]['fwd_flops_B'],
      'train': _stat([t for r in rs for t in r['train_s']]),
      'cfg_2B': _stat([t for r in rs for t in r['cfg_2B_s']]),
      'cfg_2xB': _stat([t for r in rs for t in r['cfg_2xB_s']]),
      'peak_rss_mb': max(rss) if rss else None,
      'rounds': len(rs),
    }
  p, o = out['peer'], out['ours']

  def ratio(a, b):
    return a / b if a and b else None

  if p and o:
    med = lambda s, k: s[k]['median_s'] if s[k] else None
    out['ratio_ours_over_peer'] = {
      'params': ratio(o['params'], p['params']),
      'fwd_flops_B': ratio(o['fwd_flops_B'], p['fwd_flops_B']),
      'train_median': ratio(med(o, 'train'), med(p, 'train')),
      'cfg_2B_median': ratio(med(o, 'cfg_2B'), med(p, 'cfg_2B')),
      'cfg_ours2B_over_peer2xB_median': ratio(med(o, 'cfg_2B'), med(p, 'cfg_2xB')),
      'peak_rss': ratio(o['peak_rss_mb'], p['peak_rss_mb']),
    }
    out['match_problems'] = match_problems(
      shape, o['params'], o['fwd_flops_B'], p['params'], p['fwd_flops_B']
    )
  return out


def _t(s):
  return f'{s["median_s"]:.2f} / {s["min_s"]:.2f} s' if s else '-'


def _r(x):
  return f'{x:.2f}x' if x else '-'


def markdown_table(summaries: list[dict]) -> str:
  """One table: a block of rows per shape; columns peer, ours, ours / peer."""
  rows = [
    '| shape | measure | imagen-pytorch Unet3D | imagen_video_jax VideoUNet | ours / peer |',
    '| --- | --- | ---: | ---: | ---: |',
  ]
  for s in summaries:
    p, o, r = s.get('peer') or {}, s.get('ours') or {}, s.get('ratio_ours_over_peer') or {}
    m = MATCHED.get(s['shape'])
    name = s['shape'] if m is None else f'{s["shape"]} (B={m.batch}, {m.frames}x{m.size}x{m.size})'
    f = lambda d, k: d.get(k)

    def params(d):
      return f'{d["params"] / 1e6:.2f} M' if d.get('params') else '-'

    def gflop(d, counter):
      return f'{d["fwd_flops_B"] / 1e9:.1f} ({counter})' if d.get('fwd_flops_B') else '-'

    def rss(d):
      return f'{d["peak_rss_mb"]:.0f} MB' if d.get('peak_rss_mb') else '-'

    rows += [
      f'| {name} | params | {params(p)} | {params(o)} | {_r(r.get("params"))} |',
      f'| | fwd GFLOP @B | {gflop(p, "torch")} | {gflop(o, "XLA")} | {_r(r.get("fwd_flops_B"))} |',
    ]
    if not (f(p, 'train') or f(o, 'train')):  # --count_only
      continue
    rows += [
      f'| | train step, median / min | {_t(f(p, "train"))} | {_t(f(o, "train"))} | '
      f'{_r(r.get("train_median"))} |',
      f'| | guided fwd, 1 fwd @2B | {_t(f(p, "cfg_2B"))} | {_t(f(o, "cfg_2B"))} | '
      f'{_r(r.get("cfg_2B_median"))} |',
      f'| | guided fwd, peer: 2 fwds @B | {_t(f(p, "cfg_2xB"))} | (1 fwd @2B above) | '
      f'{_r(r.get("cfg_ours2B_over_peer2xB_median"))} |',
      f'| | peak RSS | {rss(p)} | {rss(o)} | {_r(r.get("peak_rss"))} |',
    ]
  return '\n'.join(rows)


def jsonl_lines(header: dict, records: list[dict], summaries: list[dict]) -> list[str]:
  return [json.dumps(x) for x in (header, *records, *summaries)]


# ---- main --------------------------------------------------------------------------------


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--rounds', type=int, default=3, help='peer, ours, peer, ours, ...')
  ap.add_argument('--warmup', type=int, default=1, help='untimed runs per process and phase')
  ap.add_argument('--iters', type=int, default=3, help='timed runs per process and phase')
  ap.add_argument('--shapes', default=','.join(MATCHED), help='comma list of MATCHED names')
  ap.add_argument('--malloc', choices=['default', 'tuned'], default='default')
  ap.add_argument('--count_only', action='store_true', help='params and FLOPs; no timing')
  ap.add_argument(
    '--peer_python', default=os.environ.get('PEER_PYTHON', '/tmp/peer-venv/bin/python')
  )
  ap.add_argument(
    '--peer_harness',
    default=os.environ.get('PEER_HARNESS', '/work/shared/bench/peer_unet3d.py'),
    help="imagen-pytorch's timing harness (not part of this repository)",
  )
  ap.add_argument('--ours_python', default=sys.executable)
  ap.add_argument('--out', default=None, help='JSON lines (default results/compare_peer_<date>)')
  ap.add_argument('--note', default='', help='recorded in the run line, e.g. "development run"')
  ap.add_argument('--timeout', type=float, default=1800, help='seconds per process')
  return ap.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  shapes = [s for s in args.shapes.split(',') if s]
  unknown = sorted(set(shapes) - set(MATCHED))
  if unknown:
    raise SystemExit(f'unknown shapes {unknown}; known: {sorted(MATCHED)}')
  env = side_env(args.malloc)
  date = datetime.date.today().isoformat()
  out = pathlib.Path(args.out or ROOT / 'benchmarks' / 'results' / f'compare_peer_{date}.jsonl')
  command = shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv)
  header = {
    'kind': 'run',
    'date': datetime.datetime.now().isoformat(timespec='seconds'),
    'command': command,
    'args': vars(args),
    'note': args.note,
    'malloc_env': {k: v for k, v in env.items() if k.startswith('MALLOC_')},
    'xla_flags': env.get('XLA_FLAGS', ''),
    'cpu_count': os.cpu_count(),
    'matched': {
      n: {'ours': MATCHED[n].ours.to_dict(), 'peer_flags': list(MATCHED[n].peer_flags)}
      for n in shapes
    },
  }
  print(f'$ {command}', file=sys.stderr, flush=True)
  records = []
  for rnd in range(1 if args.count_only else args.rounds):
    for name in shapes:
      m = MATCHED[name]
      for side, cmd in (
        ('peer', peer_command(m, args, args.count_only)),
        ('ours', ours_command(m, args, args.count_only)),
      ):
        print(f'[round {rnd + 1}] {name} {side}: {shlex.join(cmd)[:200]}', file=sys.stderr)
        rec = normalise(side, name, rnd, run_json(cmd, env, args.timeout))
        if args.count_only:
          strip_timings(rec)
        records.append(rec)
        print(
          f'[round {rnd + 1}] {name} {side}: params {rec["params"]:,} '
          f'fwd {(rec["fwd_flops_B"] or 0) / 1e9:.1f} GFLOP, {rec["raw"]["process_wall_s"]} s',
          file=sys.stderr,
          flush=True,
        )
  summaries = [summarise(n, records) for n in shapes]
  for s in summaries:
    for p in s.get('match_problems', []):
      print(f'WARNING: not matched: {p}', file=sys.stderr)
    for note in recorded_differences(MATCHED[s['shape']], s):
      print(f'NOTE: differs from the figure recorded in MATCHED: {note}', file=sys.stderr)
  table = markdown_table(summaries)
  if not args.count_only:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open('a') as fh:
      fh.write('\n'.join(jsonl_lines(header, records, summaries)) + '\n')
    print(f'wrote {out}', file=sys.stderr)
  print(f'Command: `{command}`' + (f' ({args.note})' if args.note else ''))
  print(f'MALLOC_*: {header["malloc_env"] or "none (glibc defaults)"}\n')
  print(table)
  return 0


if __name__ == '__main__':
  sys.exit(main())
