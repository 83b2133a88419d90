"""`stage.Stage`: one description of a stage, from a training config and as stage.json."""

import dataclasses
import json
import os
import sys

import pytest

from imagen_video_jax import stage as stage_lib
from imagen_video_jax.diffusion.schedules import CosineSchedule
from imagen_video_jax.models.t5 import T5Config
from imagen_video_jax.stage import Stage, StageSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import digits as digits_config  # noqa: E402
from configs import imagen_video as paper  # noqa: E402

EARLIER_TSR = os.path.join(ROOT, 'tests', 'data', 'tsr_stage_earlier_format.json')


@pytest.mark.parametrize('name', digits_config.STAGES)
def test_a_digits_config_describes_its_stage(name):
  c = digits_config.get_config(f'stage={name}')
  s = stage_lib.from_config(c)
  assert s.name == name and s.params is None
  assert s.spec == StageSpec(**c.spec.to_dict())
  # The world is 8 fps; the base takes every other frame.
  assert s.fps == {'base': 4.0, 'tsr': 8.0, 'ssr': 8.0}[name]
  assert s.sample_cond_t == c.diffusion.sample_cond_t
  assert s.diffusion.schedule == CosineSchedule(-20.0, 20.0, 0.0)
  assert s.diffusion.p_uncond == c.diffusion.p_uncond
  assert (s.sampler.steps, s.sampler.guidance, s.sampler.clip) == (32, 3.0, 'static')
  t = c.text
  assert s.text == T5Config(
    vocab_size=t.vocab_size,
    d_model=t.d_model,
    num_layers=t.num_layers,
    num_heads=t.num_heads,
    d_kv=t.d_kv,
    d_ff=t.d_ff,
  )
  # A checkpoint saves the config as a plain dict: the same stage.
  assert stage_lib.from_config(c.to_dict()) == s


@pytest.mark.parametrize('name', paper.STAGES)
def test_a_paper_config_takes_its_own_frame_rate(name):
  """The paper's stages run at 3-24 fps from 24 fps sources (not 8 fps / frame_stride)."""
  c = paper.get_config(f'stage={name}')
  s = stage_lib.from_config(c)
  assert s.fps == c.fps and s.fps * s.spec.frame_stride == paper.SOURCE_FPS
  assert (s.sampler.steps, s.sampler.clip) == (64, 'dynamic')
  assert s.text.d_model == 4096 and s.unet.text_dim == 4096


def test_stage_json_round_trips():
  c = digits_config.get_config('stage=ssr')
  with c.unlocked():
    c.diffusion.sample_cond_t = 0.25
    c.sample.guidance = 5.0
  s = stage_lib.from_config(c, params={'w': 1})
  d = json.loads(json.dumps(s.to_json()))  # what stage.json holds
  assert 'params' not in json.dumps(d) and d['sample_cond_t'] == 0.25
  back = Stage.from_json(d, params={'w': 1})
  assert back == s
  assert Stage.from_json(d).params is None


def test_an_export_of_an_earlier_version_still_loads(tmp_path):
  """Earlier exports name the SR conditioning level `cond_aug_t` and record no text
  encoder: the data file is the TSR stage.json of the cascade shipped before world v2."""
  with open(EARLIER_TSR) as f:
    old = json.load(f)
  assert 'cond_aug_t' in old and 'sample_cond_t' not in old and 'text' not in old
  s = Stage.from_json(old)
  assert s.sample_cond_t == old['cond_aug_t'] and s.text is None
  want = stage_lib.from_config(digits_config.get_config('stage=tsr'))
  assert dataclasses.replace(s, text=want.text) == want
  # Written again, it is the current format, and reads back the same.
  again = Stage.from_json(json.loads(json.dumps(s.to_json())))
  assert again == s


def test_bad_configs_are_value_errors():
  c = digits_config.get_config('stage=tsr')
  with c.unlocked():
    c.spec.factor = 3  # 16 frames are not 3 x anything
  with pytest.raises(ValueError, match='factor 3 must divide'):
    stage_lib.from_config(c)
  c = digits_config.get_config('stage=base')
  c.sample.clip = 'sometimes'
  with pytest.raises(ValueError, match='clip'):
    stage_lib.from_config(c)
