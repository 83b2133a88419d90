"""Exported cascades are untrusted input: paths stay inside, files match their digests,
stage.json and parameters are validated, a non-finite sample is an error, and the
command-line programs refuse bad arguments in one line before loading anything."""

import hashlib
import json
import os
import shutil

import jax
import numpy as np
import pytest
from cli_util import run_module
from flax import linen as nn
from safetensors.numpy import save_file

from imagen_video_jax import export, params_io
from imagen_video_jax.cascade import CascadePipeline, NonFiniteSampleError
from imagen_video_jax.diffusion.samplers import SamplerConfig
from imagen_video_jax.models import unet as unet_lib
from imagen_video_jax.stage import Stage, StageSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, 'checkpoints', 'digits')


@pytest.fixture(scope='module')
def stage():
  """A tiny base stage without text (2 frames of 8x8), random live weights."""
  spec = StageSpec(frames=2, height=8, width=8)
  cfg = unet_lib.UNetConfig(
    levels=(unet_lib.LevelConfig(8, 1),), text_dim=None, emb_dim=16, head_dim=8
  )
  params = jax.device_get(
    nn.unbox(unet_lib.init_params(cfg, jax.random.key(0), frames=2, height=8, width=8))
  )
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape).astype(np.float32), params)
  return Stage('base', spec, cfg, params, fps=4.0, sampler=SamplerConfig(steps=1))


def _export(tmp_path, stage, *, text_files=False):
  """The stage exported to tmp_path/cascade (with stand-in text encoder files)."""
  out = tmp_path / 'cascade'
  if text_files:
    (out / 'text' / 'params').mkdir(parents=True)
    (out / 'text' / 't5_config.json').write_text('{}')
    (out / 'text' / 'params' / 'manifest').write_bytes(b'\0' * 64)
  export.save_cascade(str(out), [stage], text_dir='text' if text_files else None)
  return out


def _meta(out):
  return json.loads((out / 'cascade.json').read_text())


def _write_meta(out, meta):
  (out / 'cascade.json').write_text(json.dumps(meta))


def _digests(root):
  """sha256 of every file under root, by relative path."""
  found = {}
  for parent, _, files in os.walk(root):
    for f in files:
      path = os.path.join(parent, f)
      found[os.path.relpath(path, root)] = hashlib.sha256(open(path, 'rb').read()).hexdigest()
  return found


def test_an_export_carries_and_checks_digests(tmp_path, stage):
  out = _export(tmp_path, stage, text_files=True)
  digests = _meta(out)['digests']
  assert sorted(digests) == [
    'base/params.safetensors',
    'base/stage.json',
    'text/params/manifest',
    'text/t5_config.json',
  ]
  assert digests['base/params.safetensors'] == _digests(out)['base/params.safetensors']
  pipe = export.load_cascade(str(out), text_encoder=lambda p: None)  # stage files checked
  jax.tree.map(np.testing.assert_array_equal, pipe.stages[0].params, stage.params)
  # One changed byte in the weights (still a valid safetensors file): refused, by name.
  path = out / 'base' / 'params.safetensors'
  data = bytearray(path.read_bytes())
  data[-1] ^= 1
  path.write_bytes(bytes(data))
  with pytest.raises(
    export.ExportError, match=r'base/params.safetensors does not match its sha256'
  ):
    export.load_cascade(str(out), text_encoder=lambda p: None)
  # A text encoder file that changed, or one that is not listed, is refused before the
  # encoder is read.
  out = _export(tmp_path / 'b', stage, text_files=True)
  (out / 'text' / 't5_config.json').write_text('{"t5": 1}')
  with pytest.raises(export.ExportError, match=r'text/t5_config.json does not match'):
    export.load_cascade(str(out))
  out = _export(tmp_path / 'c', stage, text_files=True)
  (out / 'text' / 'params' / 'extra').write_bytes(b'x')
  with pytest.raises(export.ExportError, match=r"lists no digest for \['text/params/extra'\]"):
    export.load_cascade(str(out))
  os.remove(out / 'text' / 't5_config.json')
  with pytest.raises(export.ExportError, match=r't5_config.json is missing'):
    export.load_cascade(str(out), text_encoder=lambda p: None)


def test_exports_without_digests_still_load(tmp_path, stage):
  out = _export(tmp_path, stage)
  meta = _meta(out)
  del meta['digests']
  _write_meta(out, meta)
  assert export.load_cascade(str(out)).stages[0].name == 'base'
  # The shipped cascade's stage.json files are older still: they load too.
  assert export.load_stage(os.path.join(SHIPPED, 'base')).spec.frames == 8


def test_the_shipped_cascade_carries_digests_of_every_file_it_loads(tmp_path):
  shipped = json.load(open(os.path.join(SHIPPED, 'cascade.json')))
  loaded = {k: v for k, v in _digests(SHIPPED).items() if '/' in k}  # stages' and text's
  assert shipped['digests'] == loaded  # every file, each matching
  export.verify_digests(SHIPPED, shipped, export._files(SHIPPED, shipped, text=True))
  copy = tmp_path / 'digits'
  shutil.copytree(SHIPPED, copy)
  with open(copy / 'ssr' / 'params.safetensors', 'r+b') as f:  # one byte of the last stage
    f.seek(-1, os.SEEK_END)
    last = f.read(1)
    f.seek(-1, os.SEEK_END)
    f.write(bytes([last[0] ^ 1]))
  with pytest.raises(export.ExportError, match=r'ssr/params.safetensors'):
    export.load_cascade(str(copy))


@pytest.mark.parametrize(
  'name', ['../evil', '/etc', '.', 'link_out', 'base/../../evil', 17, ''], ids=repr
)
def test_stage_paths_must_stay_inside_the_export(tmp_path, stage, name):
  out = _export(tmp_path, stage)
  os.symlink(tmp_path, out / 'link_out')
  meta = _meta(out)
  meta['stages'] = [name]
  _write_meta(out, meta)
  with pytest.raises(export.ExportError, match='leads outside|not a relative path|non-empty'):
    export.load_cascade(str(out))


@pytest.mark.parametrize('text_dir', ['../evil', '/tmp', 'link_out', None])
def test_the_text_dir_must_stay_inside_the_export(tmp_path, stage, text_dir):
  out = _export(tmp_path, stage)
  os.symlink(tmp_path, out / 'link_out')
  meta = _meta(out)
  meta['text'] = {'dir': text_dir, 'max_length': 8}
  _write_meta(out, meta)
  with pytest.raises(export.ExportError, match=f'the text dir {text_dir!r}'):
    export.load_cascade(str(out))
  with pytest.raises(export.ExportError, match=f'the text dir {text_dir!r}'):
    export.load_cascade(str(out), text_encoder=lambda p: None)  # refused even unused


def test_links_leading_out_of_the_export_are_refused(tmp_path, stage):
  out = _export(tmp_path, stage, text_files=True)
  outside = tmp_path / 'outside'
  outside.mkdir()
  os.symlink(outside, out / 'text' / 'params' / 'more')
  with pytest.raises(export.ExportError, match=r"file 'text/params/more' leads outside"):
    export.load_cascade(str(out))
  params = out / 'base' / 'params.safetensors'
  os.replace(params, outside / 'params.safetensors')
  os.symlink(outside / 'params.safetensors', params)
  with pytest.raises(export.ExportError, match=r"'params.safetensors' leads outside"):
    export.load_stage(str(out / 'base'))


def _edit_stage_json(directory, edit):
  path = directory / 'stage.json'
  meta = json.loads(path.read_text())
  edit(meta)
  path.write_text(json.dumps(meta))  # NaN and Infinity are written as JSON allows
  return path


@pytest.mark.parametrize(
  'edit, message',
  [
    (lambda m: m.update(fps=float('nan')), 'fps must be finite and > 0; got nan'),
    (lambda m: m.update(fps=-4.0), 'fps must be finite and > 0'),
    (lambda m: m.update(sample_cond_t=float('inf')), r'sample_cond_t must be in \[0, 1\]'),
    (lambda m: m['sampler'].update(steps=0), r'steps must be in \[1, 10000\]; got 0'),
    (lambda m: m['sampler'].update(steps=10**6), r'steps must be in \[1, 10000\]'),
    (lambda m: m['sampler'].update(steps=2.5), 'steps must be an integer'),
    (lambda m: m['sampler'].update(guidance=float('nan')), 'guidance must be a finite number'),
    (lambda m: m['diffusion']['schedule'].update(logsnr_max=float('inf')), 'logsnr_max must'),
    (lambda m: m['diffusion'].update(min_snr_gamma=-1.0), 'min_snr_gamma must be finite and > 0'),
    (lambda m: m['spec'].update(height=0), 'sizes must be positive'),
    (
      lambda m: m['spec'].update(frames=4096, height=1024, width=1024),
      r'4096x1024x1024 \(frames x H x W\) stage output needs 48 GiB per sample',
    ),
    (lambda m: m.pop('spec'), "the entry 'spec' is missing"),
    (lambda m: m.update(spec=[1, 2]), 'must be a mapping, not list'),
  ],
)
def test_stage_json_is_validated(tmp_path, stage, edit, message):
  directory = tmp_path / 'base'
  export.save_stage(str(directory), stage)
  path = _edit_stage_json(directory, edit)
  with pytest.raises(export.ExportError, match=message) as e:
    export.load_stage(str(directory))
  assert str(path) in str(e.value)


def test_stage_json_that_is_not_json_is_refused(tmp_path, stage):
  export.save_stage(str(tmp_path), stage)
  (tmp_path / 'stage.json').write_text('{"name": ')
  with pytest.raises(export.ExportError, match='stage.json is not readable JSON'):
    export.load_stage(str(tmp_path))


def _save_flat(directory, stage, change):
  export.save_stage(str(directory), stage)
  flat = params_io.flatten_params(stage.params)
  name = sorted(flat)[0]
  flat[name] = change(flat[name])
  save_file(flat, str(directory / 'params.safetensors'))
  return name


def test_parameters_are_checked_on_load(tmp_path, stage):
  cases = [
    (lambda a: a.astype(np.int32), r'parameter {} is int32, not floating point'),
    (lambda a: np.full_like(a, np.nan), r'parameter {} has \d+ non-finite value'),
    (
      lambda a: np.zeros(a.shape + (2,), a.dtype),
      r'parameter {} has shape \(\d+, 2\); its U-Net config expects \(\d+,\)',
    ),
  ]
  for i, (change, message) in enumerate(cases):
    directory = tmp_path / str(i)
    name = _save_flat(directory, stage, change)
    with pytest.raises(export.ExportError, match='stage base .*' + message.format(name)):
      export.load_stage(str(directory))
  export.save_stage(str(tmp_path / 'x'), stage.with_params({'extra': np.zeros(2, np.float32)}))
  with pytest.raises(export.ExportError, match=r"does not fit .* unexpected \['extra'\]"):
    export.load_stage(str(tmp_path / 'x'))


@pytest.mark.parametrize('keep', [0, 7, 100, -10])
def test_a_truncated_params_file_is_refused_by_name(tmp_path, stage, keep):
  export.save_stage(str(tmp_path), stage)
  path = tmp_path / 'params.safetensors'
  path.write_bytes(path.read_bytes()[:keep])
  with pytest.raises(export.ExportError, match=f'{path} is not a readable safetensors file'):
    export.load_stage(str(tmp_path))


def test_a_non_finite_sample_is_an_error(stage):
  broken = stage.with_params(jax.tree.map(lambda p: p * np.nan, stage.params))
  with pytest.raises(NonFiniteSampleError, match='stage base sampled a video with non-finite'):
    CascadePipeline([broken], None)('x', progress=False)


# ------------------------------------------------------------------ command lines
def _refused(res, message):
  assert res.returncode != 0, res.stdout[-2000:]
  assert 'Traceback' not in res.stderr, res.stderr[-3000:]
  last = res.stderr.strip().splitlines()[-1]
  assert last.startswith('error: ') and message in last, res.stderr[-3000:]


def test_sample_flags_are_checked_before_anything_is_loaded(tmp_path):
  written = tmp_path / 'out' / 'old.mp4'
  written.parent.mkdir()
  written.write_bytes(b'an earlier video')
  before = _digests(tmp_path)
  # The cascade does not exist: each refusal below comes before it is looked for.
  base = ['--prompt=a red 3', f'--checkpoints={tmp_path}/none', f'--output={written}']
  for flag, message in [
    ('--num_samples=0', '--num_samples must be >= 1; got 0'),
    ('--steps=0', '--steps=0: steps must be in [1, 10000]; got 0'),
    ('--scale=0', '--scale must be in [1, 64]; got 0'),
    ('--guidance=nan', '--guidance=nan: guidance must be a finite number; got nan'),
    (f'--output={written}/a.mp4', f'{written} is a file, not a directory'),
    ('--output=/proc/ivj/a.mp4', 'cannot write in /proc'),
  ]:
    _refused(run_module('sample', *base, flag), message)
  assert _digests(tmp_path) == before


def test_sample_refuses_a_tampered_export_and_leaves_outputs_alone(tmp_path, stage):
  out = _export(tmp_path, stage)
  path = out / 'base' / 'stage.json'
  path.write_text(path.read_text().replace('"fps": 4.0', '"fps": 5.0'))
  written = tmp_path / 'v.mp4'
  written.write_bytes(b'an earlier video')
  before = _digests(tmp_path)
  res = run_module('sample', '--prompt=x', f'--checkpoints={out}', f'--output={written}')
  _refused(res, 'base/stage.json does not match its sha256')
  assert 'replacing 1 existing file(s)' in res.stderr  # said before loading
  assert _digests(tmp_path) == before


def test_export_cascade_checks_its_output_first(tmp_path):
  file = tmp_path / 'a_file'
  file.write_bytes(b'keep me')
  before = _digests(tmp_path)
  run = f'--run={tmp_path}/no_run'
  _refused(run_module('export_cascade', run, f'--output={file}'), 'is a file, not a directory')
  _refused(
    run_module('export_cascade', run, f'--output={file}/cascade'), 'is a file, not a directory'
  )
  _refused(run_module('export_cascade', run, f'--output={tmp_path}/new'), 'not a training workdir')
  assert _digests(tmp_path) == before


def test_sample_writes_nothing_when_a_stage_samples_non_finite_values(tmp_path, stage):
  # Finite weights that pass every load check yet overflow to inf inside the network.
  huge = stage.with_params(jax.tree.map(lambda p: p * np.float32(1e30), stage.params))
  out = _export(tmp_path, huge)
  written = tmp_path / 'v.mp4'
  res = run_module('sample', '--prompt=x', f'--checkpoints={out}', f'--output={written}')
  _refused(res, 'stage base sampled a video with non-finite values')
  assert 'nothing was written' in res.stderr
  assert not list(tmp_path.glob('v*'))
