"""configs/imagen_video.py: the paper's seven stages, checked without allocating them."""

import importlib.util
import os

import pytest

from imagen_video_jax.data.pipeline import StageSpec
from imagen_video_jax.models.unet import UNetConfig, count_params

_PATH = os.path.join(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'imagen_video.py'
)
_spec = importlib.util.spec_from_file_location('imagen_video_config', _PATH)
paper = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paper)


def _model(stage):
  return UNetConfig.from_dict(paper.get_config(f'stage={stage}').model.to_dict())


@pytest.mark.parametrize('stage', paper.STAGES)
def test_parameter_count_within_ten_percent_of_the_paper(stage):
  n = count_params(_model(stage))  # jax.eval_shape: shapes only, nothing allocated
  target = paper.PAPER_PARAMS[stage]
  assert abs(n / target - 1) <= 0.10, f'{stage}: {n / 1e9:.3f}B vs paper {target / 1e9:.2f}B'


@pytest.mark.parametrize('stage', paper.STAGES)
def test_stage_config_is_valid(stage):
  c = paper.get_config(f'stage={stage}')
  model = _model(stage)
  spec = StageSpec(**dict(c.spec))
  assert (c.frames, c.height, c.width) == (spec.frames, spec.height, spec.width)
  assert spec.frame_stride * c.fps == paper.SOURCE_FPS
  assert model.text_dim == c.text.d_model == 4096
  # Sizes go through every downsampling; SR stages take the 3-channel low-res video.
  model.check_inputs(
    (1, c.frames, c.height, c.width, 3),
    (1, c.frames, c.height, c.width, 3) if spec.is_sr else None,
    (1, c.text.max_length, model.text_dim),
  )
  assert bool(model.cond_channels) == model.cond_augment == spec.is_sr
  levels = model.levels
  if stage == 'base':
    assert all(l.temporal == 'attention' and l.spatial_attention for l in levels)
  else:
    assert all(l.temporal == 'conv' for l in levels)
  if stage in ('tsr1', 'tsr2', 'tsr3', 'ssr3'):
    assert not any(l.spatial_attention for l in levels)
  if stage == 'ssr3':
    assert not any(l.cross_attention for l in levels)  # fully convolutional
  mesh = c.mesh.to_dict()
  assert mesh['fsdp'] == -1 and mesh['tensor'] == 1 and mesh['constrain_activations']
  # The frames split over `time` divide every level's frames (the U-Net never halves T).
  assert c.frames % mesh['time'] == 0 and c.height % mesh['space'] == 0
  # The clip is split where it is large: the three 64/128-frame 192x320+ stages.
  assert (mesh['time'] * mesh['space'] > 1) == (stage in ('ssr2', 'tsr2', 'tsr3', 'ssr3'))


def test_stages_chain_into_one_cascade():
  """Each stage is conditioned on exactly what the stage before it produces."""
  prev = None
  for stage in paper.STAGES:
    c = paper.get_config(f'stage={stage}')
    spec = StageSpec(**dict(c.spec))
    if prev is not None:
      assert (spec.cond_frames, spec.cond_height, spec.cond_width) == prev, stage
    prev = (spec.frames, spec.height, spec.width)
  assert prev == (128, 768, 1280)


def test_same_keys_as_the_digits_config():
  digits_path = os.path.join(os.path.dirname(_PATH), 'digits.py')
  if not os.path.exists(digits_path):
    pytest.skip('configs/digits.py not written yet')
  s = importlib.util.spec_from_file_location('digits_config', digits_path)
  digits = importlib.util.module_from_spec(s)
  s.loader.exec_module(digits)
  d, c = digits.get_config('stage=base'), paper.get_config('stage=base')
  assert set(d.keys()) <= set(c.keys())
  for section in ('spec', 'model', 'diffusion', 'optim', 'sample', 'mesh'):
    assert set(d[section].keys()) == set(c[section].keys()), section
  # Digits-world generation keys (num_videos, clip_size, ...) have no meaning for videos.
  assert set(c.data.keys()) <= set(d.data.keys())
  assert set(d.text.keys()) <= set(c.text.keys())


def test_training_job_accepts_every_stage():
  from imagen_video_jax.training import loop

  for stage in paper.STAGES:
    loop.validate(paper.get_config(f'stage={stage}'))


def test_bad_stage_is_a_clear_error():
  with pytest.raises(ValueError, match='use one of base, tsr1'):
    paper.get_config('stage=sr9')
  with pytest.raises(ValueError, match='unknown argument'):
    paper.get_config('stage=base,tiny=True')


@pytest.mark.parametrize('stage', ['base', 'ssr3'])
def test_every_stage_fully_shards_under_fsdp(stage):
  """On a 64-way FSDP (abstract) mesh each device holds ~1/64 of the params: they all split."""
  import jax
  from imagen_video_jax import parallel
  from imagen_video_jax.models.unet import init_params

  cfg = _model(stage)
  f = cfg.downsample_factor
  boxed = jax.eval_shape(
    lambda k: init_params(cfg, k, frames=1, height=f, width=f), jax.random.key(0)
  )
  mesh = parallel.abstract_mesh(64, data=1, fsdp=-1)
  per_device = parallel.param_bytes_per_device(boxed, parallel.logical_shardings(boxed, mesh))
  total = 4 * sum(x.size for x in jax.tree.leaves(parallel._values(boxed)))
  assert per_device < 1.02 * total / 64, (per_device, total / 64)
