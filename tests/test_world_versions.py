"""Moving Digits v1 (bouncing) and v2 are never mixed: data dirs, resumes, exports, judges."""

import json
import os
import sys

import pytest

from imagen_video_jax import export
from imagen_video_jax.data import digits, prepare
from imagen_video_jax.training import checkpointing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import digits as digits_config  # noqa: E402


def _config(**data):
  c = digits_config.get_config('stage=base,tiny=True')
  c.data.update(data)
  return c


def test_a_data_dir_of_the_other_world_version_is_refused(tmp_path):
  old = tmp_path / 'v1'
  digits.write_shards(digits.DigitsConfig(bounce=True), 0, str(old), 4, 4)
  (old / prepare.VOCAB_FILE).write_bytes(b'')  # what makes a folder a finished world
  with pytest.raises(prepare.DataDirError, match=r'world v1.*asks for v2.*data\.bounce=True'):
    prepare.prepare_digits(_config(dir=str(old)), str(tmp_path / 'run'))
  # Asking for the bouncing world reads it.
  assert prepare.prepare_digits(_config(dir=str(old), bounce=True), str(tmp_path / 'run')) == str(
    old
  )


def test_each_version_has_its_own_default_folder_and_v1_keeps_its_name():
  data = dict(_config().data)
  v2 = prepare.digits_world_name(data)
  v1 = prepare.digits_world_name({**data, 'bounce': True})
  legacy = {k: v for k, v in data.items() if k != 'bounce'}  # saved before the field
  assert v2.startswith('digits-v2-') and v1 == prepare.digits_world_name(legacy)
  assert v1 == v2.replace('digits-v2-', 'digits-')
  assert prepare.world_config(legacy).bounce


def test_a_run_saved_before_world_v2_resumes_only_on_the_bouncing_world():
  saved = checkpointing.config_to_dict(_config())
  del saved['data']['bounce']
  assert checkpointing.config_differences(saved, _config(bounce=True)) == []
  diffs = checkpointing.config_differences(saved, _config())
  assert diffs == ['data.bounce: checkpoint "<absent>", now false']


def test_an_export_refuses_runs_of_two_world_versions():
  v1 = checkpointing.config_to_dict(_config(bounce=True))
  v2 = checkpointing.config_to_dict(_config())
  assert export.training_world([v2, v2]) == {'name': 'digits', 'version': 2}
  assert export.training_world([v1]) == {'name': 'digits', 'version': 1}
  with pytest.raises(export.ExportError, match='different worlds.*digits v1, digits v2'):
    export.training_world([v2, v1])
  other = {**v2, 'data': {**v2['data'], 'world': 'records'}}
  assert export.training_world([other]) is None


def test_cascade_json_world_is_validated(tmp_path):
  meta = {'format': export.FORMAT, 'stages': ['base'], 'text': None}
  export._check_cascade_meta('c.json', {**meta, 'world': {'name': 'digits', 'version': 2}})
  for bad in ({'name': 'digits'}, {'name': 'digits', 'version': '2'}, 'digits'):
    with pytest.raises(export.ExportError, match='"world"'):
      export._check_cascade_meta('c.json', {**meta, 'world': bad})


def test_the_shipped_cascade_records_its_world():
  with open(os.path.join(ROOT, 'checkpoints', 'digits', export.CASCADE_FILE)) as f:
    world = json.load(f)['world']
  assert world == {'name': 'digits', 'version': 2}  # the default world, the judge's


def test_the_evaluation_reads_a_cascade_with_its_own_worlds_motion():
  import types

  from imagen_video_jax.evaluation import judge as judge_lib, metrics

  judge = judge_lib.load_judge()  # the shipped judge: world v2
  assert judge.config.world_version == 2

  def cascade(world):
    return types.SimpleNamespace(world=world)

  v1 = metrics.judge_for_cascade(cascade({'name': 'digits', 'version': 1}), judge)
  assert v1.config.bounce and v1.params is judge.params  # the same network
  assert metrics.judge_for_cascade(cascade({'name': 'digits', 'version': 2}), judge) is judge
  assert metrics.judge_for_cascade(cascade(None), judge) is judge  # an export without "world"
  with pytest.raises(ValueError, match='no Moving Digits world v3'):
    metrics.judge_for_cascade(cascade({'name': 'digits', 'version': 3}), judge)
  # What the fit changes: a clip that goes left, turns at the wall and ends right of its
  # start is "left" in the bouncing world and "right" as a person (and world v2) reads it.
  config = digits.DigitsConfig(bounce=True)
  ex = next(
    e
    for e in (digits.make_video(config, 0, i) for i in range(200))
    if e.meta['direction'] == 'left'
    and e.arrays['positions'][-1, 0] > e.arrays['positions'][0, 0] + 2
  )
  assert v1.predict(ex.video[None]).direction == ['left']
  assert judge.predict(ex.video[None]).direction == ['right']
