"""benchmarks/compare_peer.py: the matched configurations and the report (no torch needed)."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from imagen_video_jax.models import unet as unet_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PEER_VENV = pathlib.Path('/tmp/peer-venv')


def _load():
  spec = importlib.util.spec_from_file_location(
    'compare_peer', ROOT / 'benchmarks' / 'compare_peer.py'
  )
  mod = importlib.util.module_from_spec(spec)
  sys.modules['compare_peer'] = mod  # dataclasses look their module up there
  spec.loader.exec_module(mod)
  return mod


cp = _load()


@pytest.mark.parametrize('name', sorted(cp.MATCHED))
def test_our_side_builds_with_the_recorded_param_count(name):
  m = cp.MATCHED[name]
  n = unet_lib.count_params(m.ours, frames=m.frames, height=m.size, width=m.size)
  assert n == m.ours_params, f'{name}: {n} params, MATCHED records {m.ours_params}'
  # The recorded figures are matched within the stated tolerances.
  assert not cp.match_problems(name, m.ours_params, m.ours_gflop, m.peer_params, m.peer_gflop), (
    'recorded configurations are not matched'
  )
  # What unet_cpu.py is given round-trips to the same config.
  d = json.loads(m.ours_json())
  assert unet_lib.UNetConfig.from_dict(d['unet']) == m.ours
  assert (d['frames'], d['size'], d['batch']) == (m.frames, m.size, m.batch)


def test_shapes_and_peer_flags():
  base, ssr = cp.MATCHED['digits-base'], cp.MATCHED['digits-ssr']
  assert (base.batch, base.frames, base.size, base.ours.cond_channels) == (8, 8, 16, 0)
  assert (ssr.batch, ssr.frames, ssr.size, ssr.ours.cond_channels) == (4, 16, 32, 3)
  for m in (base, ssr):
    levels = len(m.peer_flags[m.peer_flags.index('--dim-mults') + 1].split(','))
    assert levels == len(m.ours.levels)  # same resolutions: S, S/2, S/4
    assert '--spatial-attn-scope' in m.peer_flags and 'frame' in m.peer_flags
    args = cp.parse_args(['--iters=2', '--warmup=1'])
    cmd = cp.peer_command(m, args)
    assert cmd[cmd.index('--batch') + 1] == str(m.batch)
    assert ('--cond-images' in cmd) == bool(m.ours.cond_channels)
    ours = cp.ours_command(m, args)
    assert ours[1].endswith('unet_cpu.py') and '--iters=2' in ours


def test_both_sides_get_the_same_malloc_environment():
  base = {'MALLOC_ARENA_MAX': '2', 'PATH': '/bin'}
  plain = cp.side_env('default', base)
  assert not [k for k in plain if k.startswith('MALLOC_')]
  tuned = cp.side_env('tuned', base)
  assert {k: v for k, v in tuned.items() if k.startswith('MALLOC_')} == cp.MALLOC_TUNED


def _fake(side, shape, rnd, train, cfg2b, cfg2xb=None, rss=1000.0):
  m = cp.MATCHED[shape]
  if side == 'peer':
    rec = {
      'params': m.peer_params,
      'flops_fwd_batchB': m.peer_gflop * 1e9,
      'train_step_s': {'median_s': 0, 'all_s': train},
      'cfg_batched_s': {'median_s': 0, 'all_s': cfg2b},
      'cfg_peer_s': {'median_s': 0, 'all_s': cfg2xb},
      'peak_rss_mb': {'after_build': 500.0, 'after_train': rss},
    }
  else:
    rec = {
      'params': m.ours_params,
      'fwd_flops_B': m.ours_gflop * 1e9,
      'train_step': {'median_s': 0, 'all_s': train},
      'cfg_batched': {'median_s': 0, 'all_s': cfg2b},
      'peak_rss_mb': {'after_compile': rss, 'after_train': rss - 1},
    }
  return cp.normalise(side, shape, rnd, rec)


def test_summary_table_and_json_from_fake_records():
  recs = [
    _fake('peer', 'digits-base', 0, [4.0, 3.0, 5.0], [2.0, 2.2], [3.0, 3.2], rss=3000.0),
    _fake('ours', 'digits-base', 0, [2.0, 1.0], [1.0, 1.2], rss=1500.0),
    _fake('peer', 'digits-base', 1, [6.0], [2.4], [3.4], rss=3100.0),
    _fake('ours', 'digits-base', 1, [3.0], [1.4], rss=1400.0),
  ]
  s = cp.summarise('digits-base', recs)
  # pooled over both rounds
  assert s['peer']['train'] == {'median_s': 4.5, 'min_s': 3.0, 'n': 4}
  assert s['ours']['train'] == {'median_s': 2.0, 'min_s': 1.0, 'n': 3}
  assert s['peer']['peak_rss_mb'] == 3100.0 and s['ours']['peak_rss_mb'] == 1500.0
  r = s['ratio_ours_over_peer']
  assert r['train_median'] == pytest.approx(2.0 / 4.5)
  assert r['cfg_2B_median'] == pytest.approx(1.2 / 2.2)
  assert r['cfg_ours2B_over_peer2xB_median'] == pytest.approx(1.2 / 3.2)
  assert s['match_problems'] == []
  assert cp.recorded_differences(cp.MATCHED['digits-base'], s) == []

  table = cp.markdown_table([s])
  lines = table.splitlines()
  assert lines[0].startswith('| shape | measure | imagen-pytorch')
  assert all(x.count('|') == 6 for x in lines)
  assert '| digits-base (B=8, 8x16x16) | params | 14.32 M | 13.62 M | 0.95x |' in lines
  assert '| | train step, median / min | 4.50 / 3.00 s | 2.00 / 1.00 s | 0.44x |' in lines
  assert '| | peak RSS | 3100 MB | 1500 MB | 0.48x |' in lines

  out = cp.jsonl_lines({'kind': 'run', 'command': 'x'}, recs, [s])
  parsed = [json.loads(x) for x in out]
  assert [p['kind'] for p in parsed] == ['run'] + ['record'] * 4 + ['summary']
  assert parsed[1]['side'] == 'peer' and parsed[1]['raw']['params'] == 14_322_426


def test_count_only_table_has_no_timing_rows_and_mismatch_is_reported():
  recs = [
    _fake('peer', 'digits-ssr', 0, [1.0], [1.0], [1.0]),
    _fake('ours', 'digits-ssr', 0, [1.0], [1.0]),
  ]
  recs = [cp.strip_timings(r) for r in recs]
  s = cp.summarise('digits-ssr', recs)
  table = cp.markdown_table([s])
  assert 'train step' not in table and 'fwd GFLOP @B | 79.2 (torch) | 82.2 (XLA)' in table
  assert cp.match_problems('x', 100, 1.0, 120, 1.0)  # params 17% apart
  assert cp.match_problems('x', 100, 1.2, 100, 1.0)  # FLOPs 20% apart
  assert not cp.match_problems('x', 100, 1.1, 105, 1.0)


@pytest.mark.slow
@pytest.mark.skipif(not PEER_VENV.exists(), reason='needs the peer venv at /tmp/peer-venv')
def test_count_only_against_the_peer(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['PYTHONPATH'] = str(ROOT)
  p = subprocess.run(
    [sys.executable, str(ROOT / 'benchmarks' / 'compare_peer.py'), '--count_only'],
    capture_output=True,
    text=True,
    env=env,
    timeout=1200,
  )
  assert p.returncode == 0, p.stderr[-3000:]
  assert 'WARNING' not in p.stderr and 'NOTE' not in p.stderr, p.stderr[-3000:]
  assert '| digits-ssr (B=4, 16x32x32) | params | 4.42 M | 4.53 M | 1.03x |' in p.stdout
