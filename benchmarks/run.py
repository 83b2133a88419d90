r"""Train-step benchmark of the cascade's U-Nets on one accelerator, in one command.

    python -m benchmarks.run --suite=gpu [--output=benchmarks/results/<device>.json]
        [--markdown=FILE] [--peak_flops=FLOP/S] [--paper_batch=N] [--paper_channels=384]
    python -m benchmarks.run --suite=cpu     # the same code on tiny shapes (a dry run)

Workloads (one device each): the three digits stages (configs/digits.py: base, tsr, ssr,
their own train step `training.step.make_train_step` with the in-step frozen T5) and
`paper_base`, the paper's base stage (configs/imagen_video.py: 16x24x40, attention at
every level, cached T5-XXL text 128x4096, bfloat16 compute, remat='full', scanned blocks)
cut to fit one device: its channels scaled from 768 to --paper_channels (384: ~1.4B
parameters, ~23 GB of params, EMA and Adam state). The batch: --paper_batch (default 8),
halved while XLA's memory analysis of the compiled step exceeds 90% of the device's
memory, and again on an out-of-memory error at run time.

Per workload: compile time; train step time (median over the timed steps after warm-up)
and examples/s; the analytic FLOPs (benchmarks/flops.py) of the step (model FLOPs: 3x
the U-Net forward + the frozen T5 forward) and XLA's own count
(`compiled.cost_analysis()['flops']`) against the analytic count of what XLA compiles
(`xla_view`: remat recompute in, scanned blocks counted once, as XLA counts a loop);
MFU = model FLOPs / step time / the device's peak (bf16 dense, `PEAK_FLOPS` by
device_kind, or --peak_flops; null with a note for a device not in the table); peak
device memory (`memory_stats()['peak_bytes_in_use']`; on CPU the process's peak RSS).

Output: a JSON list (one object per workload) at --output, and one Markdown table row
per workload, printed and appended to --markdown. A failing workload (e.g. out of
memory) is recorded in its row and the suite goes on; the exit status is non-zero only
if every workload failed. On GPU each workload runs in its own process (--isolate, the
default there) with a wall-clock budget, so the peak memory is its own and a hung or
runaway workload is stopped; the gpu suite's budgets add up to under 8 minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import flops as flops_lib

# Peak dense bfloat16 FLOP/s per device, matched (in order) against jax's device_kind
# in lower case. Vendor figures without sparsity.
PEAK_FLOPS = (
  ('h100 pcie', 756e12),
  ('h100', 989e12),  # SXM (device_kind 'NVIDIA H100 80GB HBM3')
  ('h200', 989e12),
  ('a100', 312e12),
  ('tpu v4', 275e12),
  ('tpu v5 lite', 197e12),  # v5e
  ('tpu v5e', 197e12),
  ('tpu v5p', 459e12),
  ('tpu v5', 459e12),  # v5p reports 'TPU v5'
  ('tpu v6 lite', 918e12),  # v6e
  ('tpu v6e', 918e12),
)

SUITES = {
  'gpu': ('digits_base', 'digits_tsr', 'digits_ssr', 'paper_base'),
  # The dry run: a super-resolution digits stage (in-step T5, conditioning video, temporal
  # conv) and the paper-shaped stage (attention everywhere, bf16, remat, scanned blocks).
  'cpu': ('digits_tsr', 'paper_base'),
}
# Wall-clock budget (s) of each workload in the gpu suite: 4 x process start + these < 8 min.
BUDGET_S = {'digits_base': 60, 'digits_tsr': 60, 'digits_ssr': 60, 'paper_base': 240}
CPU_BUDGET_S = 60
FLOPS_TOLERANCE = 0.15  # |XLA / analytic - 1| (see BENCHMARKS.md, 'Accelerator benchmark')


def peak_flops(device_kind: str, override: float | None = None) -> tuple[float | None, str]:
  """(peak FLOP/s of one device or None, where the figure comes from)."""
  if override:
    return float(override), 'from --peak_flops'
  kind = (device_kind or '').lower()
  for key, value in PEAK_FLOPS:
    if key in kind:
      return value, f'bf16 dense peak of {key!r}'
  return None, f'device {device_kind!r} is not in the peak table: MFU not computed (--peak_flops)'


def _slug(text: str) -> str:
  return re.sub(r'[^a-z0-9]+', '_', text.lower()).strip('_') or 'device'


def _log(msg: str) -> None:
  print(f'[bench {time.strftime("%H:%M:%S")}] {msg}', flush=True)


@dataclasses.dataclass
class Workload:
  name: str
  config: object  # ml_collections.ConfigDict of the stage
  batch: int
  auto_batch: bool = False  # halve the batch while it does not fit


def make_workload(name: str, suite: str, args) -> Workload:
  tiny = suite == 'cpu'
  if name.startswith('digits_'):
    from imagen_video_jax.configs import digits

    c = digits.get_config(f'stage={name[7:]}' + (',tiny=True' if tiny else ''))
    batch = 2 if tiny else (args.digits_batch or int(c.data.batch_size))
    c.mesh.data = 1
    return Workload(name, c, batch)
  if name == 'paper_base':
    from imagen_video_jax.configs import common, imagen_video

    c = imagen_video.get_config('stage=base')
    if tiny:  # same layout and options, toy sizes
      c.model.levels = tuple(common.level(32 * m, b, True, 'attention', True) for m, b in ((1, 2),))
      c.model.text_dim = c.text.d_model = 32
      c.model.emb_dim, c.model.head_dim = 32, 16
      c.text.max_length = 8
      c.spec.frames, c.spec.height, c.spec.width = 4, 8, 8
      batch = 2
    else:
      scale = args.paper_channels / c.model.levels[0]['channels']
      c.model.levels = tuple(
        dict(lv, channels=int(round(lv['channels'] * scale))) for lv in c.model.levels
      )
      batch = args.paper_batch
    c.mesh.fsdp = 1
    return Workload(name, c, batch, auto_batch=not tiny)
  raise ValueError(f'unknown workload {name!r}')


def _make_batch(config, model_cfg, spec, batch: int, sharding, seed: int = 0) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  from imagen_video_jax import planning

  config.data.batch_size = batch
  shapes = planning.abstract_batch(config, model_cfg, spec, sharding)
  rng = np.random.default_rng(seed)
  out = {}
  for k, s in shapes.items():
    if k == 'frame_ids':
      v = np.zeros(s.shape, np.int32)  # one clip per row
    elif k == 'text_mask':
      v = np.ones(s.shape, bool)
    elif k == 'tokens':
      v = rng.integers(1, int(config.text.vocab_size), s.shape).astype(np.int32)
    else:
      v = rng.standard_normal(s.shape).astype(np.float32)
    out[k] = jax.device_put(jnp.asarray(v, s.dtype), sharding)
  return out


def _is_oom(e: BaseException) -> bool:
  text = f'{type(e).__name__}: {e}'.lower()
  return 'resource_exhausted' in text or 'out of memory' in text or 'oom' in text.split()


def _peak_memory(device) -> tuple[int | None, str]:
  try:
    stats = device.memory_stats() or {}
  except Exception:  # noqa: BLE001
    stats = {}
  if 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device peak_bytes_in_use'
  import resource

  return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, 'process peak RSS'


def run_workload(name: str, suite: str, args) -> dict:
  """Compiles and times one workload's train step; returns its row (raises on failure)."""
  import jax

  from imagen_video_jax import parallel
  from imagen_video_jax.models import t5 as t5_lib
  from imagen_video_jax.models import unet as unet_lib
  from imagen_video_jax.training import loop
  from imagen_video_jax.training import state as state_lib
  from imagen_video_jax.training import step as step_lib
  from flax import linen as nn

  t_start = time.perf_counter()
  budget = BUDGET_S.get(name, 60) if suite == 'gpu' else CPU_BUDGET_S
  wl = make_workload(name, suite, args)
  c = wl.config
  stage = loop.validate(c)
  model_cfg, spec = stage.unet, stage.spec
  device = jax.devices()[0]
  mesh = parallel.make_mesh(data=1, fsdp=1, tensor=1, devices=[device])
  rules = parallel.DEFAULT_RULES
  batch_sh = parallel.batch_sharding(mesh)
  text_len = int(c.text.max_length) if model_cfg.text_dim is not None else 0
  row = dict(
    workload=name,
    suite=suite,
    device_kind=device.device_kind,
    platform=device.platform,
    jax_version=jax.__version__,
    dtype=model_cfg.dtype,
    remat=model_cfg.remat,
    scan_blocks=model_cfg.scan_blocks,
    shape=[spec.frames, spec.height, spec.width],
    text_len=text_len,
    text_source=str(c.text.source),
  )
  tx, schedule = state_lib.make_optimizer(c.optim)
  boxed = unet_lib.init_fn(
    model_cfg, frames=spec.frames, height=spec.height, width=spec.width, text_len=text_len or 8
  )
  abstract, shardings = state_lib.state_shardings(boxed, tx, mesh, rules)
  row['params'] = sum(int(x.size) for x in jax.tree.leaves(abstract.params))
  t5_model = t5_params = t5_cfg = None
  if model_cfg.text_dim is not None and c.text.source != 'cache':
    t5_cfg = stage.text
    t5_model = t5_lib.T5Encoder(t5_cfg)
    t5_params = jax.device_put(nn.unbox(t5_lib.init_params(t5_cfg, 0)), batch_sh)
  _log(f'{name}: {row["params"] / 1e6:.1f}M params, {spec.frames}x{spec.height}x{spec.width}')
  state = state_lib.make_init_fn(boxed, tx, shardings)(jax.random.key(0))
  step_fn = step_lib.make_train_step(
    c, unet_lib.VideoUNet(model_cfg), t5_model, tx, schedule, jax.random.key(1)
  )
  compiler_options = (
    {'xla_backend_optimization_level': 0} if suite == 'cpu' and args.fast_compile else None
  )
  bytes_limit = None
  try:
    bytes_limit = (device.memory_stats() or {}).get('bytes_limit')
  except Exception:  # noqa: BLE001
    pass

  batch = wl.batch
  compile_s = []
  while True:
    data = _make_batch(c, model_cfg, spec, batch, batch_sh)
    with parallel.mesh_context(mesh, rules, constrain_activations=False):
      t = time.perf_counter()
      compiled = (
        jax.jit(step_fn, donate_argnums=0, compiler_options=compiler_options)
        .lower(state, data, t5_params)
        .compile()
      )
      compile_s.append(time.perf_counter() - t)
    _log(f'{name}: batch {batch} compiled in {compile_s[-1]:.1f} s')
    need = None
    try:
      ma = compiled.memory_analysis()
      need = (
        ma.argument_size_in_bytes
        + ma.output_size_in_bytes
        - ma.alias_size_in_bytes
        + ma.temp_size_in_bytes
      )
    except Exception:  # noqa: BLE001
      pass
    row['xla_memory_estimate_bytes'] = need
    if wl.auto_batch and bytes_limit and need and need > 0.9 * bytes_limit and batch > 1:
      _log(f'{name}: needs {need / 2**30:.1f} GiB of {bytes_limit / 2**30:.1f}: halving batch')
      batch //= 2
      continue
    try:
      warm = 1 if suite == 'cpu' else 2
      for _ in range(warm):
        state, m = compiled(state, data, t5_params)
        jax.block_until_ready(m)
      break
    except Exception as e:  # noqa: BLE001
      if wl.auto_batch and _is_oom(e) and batch > 1:
        _log(f'{name}: out of memory at batch {batch}: halving')
        batch //= 2
        state = state_lib.make_init_fn(boxed, tx, shardings)(jax.random.key(0))
        continue
      raise

  times = []
  max_steps = 1 if suite == 'cpu' else args.steps
  while len(times) < max_steps:
    t = time.perf_counter()
    state, m = compiled(state, data, t5_params)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t)
    spent = time.perf_counter() - t_start
    if len(times) >= 3 and spent + 2 * times[-1] > 0.85 * budget:
      break
  step_s = statistics.median(times)

  an = flops_lib.unet_flops(
    model_cfg,
    batch=batch,
    frames=spec.frames,
    height=spec.height,
    width=spec.width,
    text_len=text_len,
    text_per_frame=True,
    logsnr_per_frame=bool(c.diffusion.per_frame_time),
    t5_cfg=t5_cfg,
  )
  xla = flops_lib.xla_flops(compiled)
  peak, peak_note = peak_flops(device.device_kind, args.peak_flops)
  mem, mem_note = _peak_memory(device)
  ratio = xla / an['xla_view'] if xla else None
  row.update(
    batch=batch,
    steps_timed=len(times),
    step_s=step_s,
    step_s_min=min(times),
    examples_per_s=batch / step_s,
    compile_s=compile_s[-1],
    compile_s_all=compile_s,
    model_flops_per_step=an['model_train'],
    analytic_xla_view_flops=an['xla_view'],
    xla_flops=xla,
    xla_to_analytic=ratio,
    flops_check=(
      None if ratio is None else ('ok' if abs(ratio - 1) <= FLOPS_TOLERANCE else 'mismatch')
    ),
    model_flops_per_s=an['model_train'] / step_s,
    peak_flops_per_device=peak,
    mfu=(an['model_train'] / step_s / peak) if peak else None,
    mfu_note=peak_note,
    peak_memory_bytes=mem,
    peak_memory_source=mem_note,
    device_memory_bytes=bytes_limit,
    loss=float(m['loss']),
    wall_s=time.perf_counter() - t_start,
    error=None,
  )
  _log(
    f'{name}: {step_s * 1e3:.1f} ms/step, {batch / step_s:.1f} ex/s, '
    f'XLA/analytic {ratio if ratio is None else round(ratio, 3)}, '
    f'MFU {row["mfu"] if row["mfu"] is None else round(row["mfu"], 4)}'
  )
  return row


def _error_row(name: str, suite: str, err: str) -> dict:
  return dict(workload=name, suite=suite, error=err)


def _run_isolated(name: str, args) -> dict:
  """One workload in a child process under its wall-clock budget."""
  budget = BUDGET_S.get(name, 60) if args.suite == 'gpu' else CPU_BUDGET_S
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'row.json')
    cmd = [sys.executable, '-m', 'benchmarks.run', f'--suite={args.suite}', f'--_child={name}',
           f'--_child_out={out}'] + _passthrough(args)  # fmt: skip
    try:
      proc = subprocess.run(cmd, timeout=budget + 30, stdout=None, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    except subprocess.TimeoutExpired:
      return _error_row(name, args.suite, f'timed out after {budget + 30} s')
    if os.path.exists(out):
      with open(out) as f:
        return json.load(f)
    tail = (proc.stderr or '').strip().splitlines()[-3:]
    return _error_row(name, args.suite, f'exit {proc.returncode}: ' + ' | '.join(tail))


def _passthrough(args) -> list[str]:
  out = [f'--steps={args.steps}', f'--paper_batch={args.paper_batch}',
         f'--paper_channels={args.paper_channels}']  # fmt: skip
  if args.peak_flops:
    out.append(f'--peak_flops={args.peak_flops}')
  if args.digits_batch:
    out.append(f'--digits_batch={args.digits_batch}')
  return out


def _fmt(v, spec, scale=1.0):
  return '-' if v is None else format(v * scale, spec)


def markdown_header() -> str:
  return (
    '| device | workload | dtype | batch | step (ms) | examples/s | model TFLOP/step '
    '| XLA / analytic | MFU | compile (s) | peak mem (GiB) | note |\n'
    '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |'
  )


def markdown_row(r: dict) -> str:
  note = r.get('error') or ''
  if not note and r.get('mfu') is None:
    note = r.get('mfu_note', '')
  note = note.replace('|', '/').replace('\n', ' ')[:160]
  return (
    f'| {r.get("device_kind", "?")} | {r["workload"]} | {r.get("dtype", "-")} '
    f'| {r.get("batch", "-")} | {_fmt(r.get("step_s"), ".1f", 1e3)} '
    f'| {_fmt(r.get("examples_per_s"), ".1f")} '
    f'| {_fmt(r.get("model_flops_per_step"), ".3f", 1e-12)} '
    f'| {_fmt(r.get("xla_to_analytic"), ".3f")} | {_fmt(r.get("mfu"), ".3f")} '
    f'| {_fmt(r.get("compile_s"), ".1f")} | {_fmt(r.get("peak_memory_bytes"), ".2f", 2**-30)} '
    f'| {note} |'
  )


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('--suite', choices=sorted(SUITES), default='gpu')
  ap.add_argument('--dry_run', action='store_true', help='same as --suite=cpu')
  ap.add_argument('--workloads', default='', help='comma-separated subset of the suite')
  ap.add_argument('--output', default='', help='JSON file (default results/<device>.json)')
  ap.add_argument('--markdown', default='', help='append the table rows to this file')
  ap.add_argument('--peak_flops', type=float, default=None, help='peak FLOP/s per device')
  ap.add_argument('--steps', type=int, default=10, help='timed steps at most (gpu suite)')
  ap.add_argument('--paper_batch', type=int, default=8, help='paper_base: starting batch')
  ap.add_argument('--paper_channels', type=int, default=384, help='paper_base: level-0 width')
  ap.add_argument('--digits_batch', type=int, default=0, help='digits: batch (0: the config)')
  ap.add_argument('--isolate', action=argparse.BooleanOptionalAction, default=None,
                  help='each workload in its own process (default: on for --suite=gpu)')  # fmt: skip
  ap.add_argument('--fast_compile', action=argparse.BooleanOptionalAction, default=True,
                  help='cpu suite: LLVM at -O0 (faster compiles, slower steps)')  # fmt: skip
  ap.add_argument('--_child', default='', help=argparse.SUPPRESS)
  ap.add_argument('--_child_out', default='', help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.dry_run:
    args.suite = 'cpu'
  if args.isolate is None:
    args.isolate = args.suite == 'gpu'
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  if args._child:
    try:
      row = run_workload(args._child, args.suite, args)
    except Exception as e:  # noqa: BLE001 - recorded in the row
      row = _error_row(args._child, args.suite, f'{type(e).__name__}: {str(e)[:500]}')
      _log(f'{args._child}: FAILED: {row["error"][:200]}')
    with open(args._child_out, 'w') as f:
      json.dump(row, f)
    return 0

  names = [n for n in args.workloads.split(',') if n] or list(SUITES[args.suite])
  t0 = time.perf_counter()
  rows = []
  for name in names:
    _log(f'{name}: start ({len(rows) + 1}/{len(names)}, {time.perf_counter() - t0:.0f} s in)')
    if args.isolate:
      row = _run_isolated(name, args)
    else:
      try:
        row = run_workload(name, args.suite, args)
      except Exception as e:  # noqa: BLE001 - recorded in the row
        row = _error_row(name, args.suite, f'{type(e).__name__}: {str(e)[:500]}')
    if row.get('error'):
      _log(f'{name}: FAILED: {row["error"][:300]}')
    rows.append(row)

  kind = next((r['device_kind'] for r in rows if r.get('device_kind')), 'unknown')
  for r in rows:
    r.setdefault('device_kind', kind)
  out = args.output or os.path.join(os.path.dirname(__file__), 'results', f'{_slug(kind)}.json')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w') as f:
    json.dump(rows, f, indent=1)
  table = [markdown_row(r) for r in rows]
  print(markdown_header())
  print('\n'.join(table))
  if args.markdown:
    new = not os.path.exists(args.markdown) or os.path.getsize(args.markdown) == 0
    with open(args.markdown, 'a') as f:
      f.write(('' if not new else markdown_header() + '\n') + '\n'.join(table) + '\n')
  _log(
    f'done in {time.perf_counter() - t0:.0f} s: {out}'
    + (f', {args.markdown}' if args.markdown else '')
  )
  return 1 if all(r.get('error') for r in rows) else 0


if __name__ == '__main__':
  sys.exit(main())
