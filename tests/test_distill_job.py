"""The distillation job (`python -m imagen_video_jax.distill`): a training job whose loss
is a distillation phase's. Guidance phase from a trained stage, halving phase from that
student, exact resume after SIGTERM, export and sampling of the student.

All on the tiny base stage of configs/digits.py.
"""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from cli_util import job_env, preempt, run_module

from imagen_video_jax import export, params_io, sampling, training
from imagen_video_jax.cli._jobs import configure_distill
from imagen_video_jax.models import unet as unet_lib
from imagen_video_jax.training import checkpointing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from configs import digits as digits_config  # noqa: E402

STEPS = 12
XLA_CACHE = os.environ['JAX_COMPILATION_CACHE_DIR']


def _config(data_dir, **fields):
  c = digits_config.get_config('stage=base,tiny=True')
  c.num_steps, c.log_every, c.checkpoint_every_steps, c.sample_every = STEPS, 1, 6, 0
  c.data.dir = data_dir
  for k, v in fields.items():
    setattr(c, k, v)
  return c


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """A tiny trained teacher and a guidance student distilled from it in one go."""
  root = tmp_path_factory.mktemp('distill')
  data_dir = str(root / 'data')
  teacher = str(root / 'teacher')
  training.train_and_evaluate(_config(data_dir, num_steps=30), teacher)
  c = _config(data_dir)
  configure_distill(c, teacher, 'guidance', None)
  student = str(root / 'guided')
  result = training.train_and_evaluate(c, student)
  return root, data_dir, teacher, student, result


def _cmd(workdir, data_dir, teacher, *extra):
  return [
    sys.executable,
    '-m',
    'imagen_video_jax.distill',
    '--config=configs/digits.py:stage=base,tiny=True',
    f'--workdir={workdir}',
    f'--teacher={teacher}',
    '--phase=guidance',
    f'--config.num_steps={STEPS}',
    '--config.log_every=1',
    '--config.checkpoint_every_steps=6',
    '--config.sample_every=0',
    f'--config.data.dir={data_dir}',
    *extra,
  ]


def _env():
  return job_env(XLA_CACHE, ROOT)


def _leaves_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


def test_the_guidance_student_starts_as_its_teacher_and_learns(runs):
  _, _, teacher, student, result = runs
  # The loss went down and the guidance embedding moved off zero.
  losses = [h['loss'] for h in result.history]
  assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
  emb = params_io.flatten_params(jax.device_get(result.state.params))
  names = [k for k in emb if k.startswith(unet_lib.GUIDANCE_EMBEDDING + '/')]
  assert names and any(np.abs(emb[k]).max() > 0 for k in names if k.endswith('fc2/kernel'))
  # Every other parameter started from the teacher's EMA weights: they are the same
  # tree but for the guidance embedding.
  _, t_ema, _ = export.read_training_run(teacher)
  t_names = set(params_io.flatten_params(t_ema))
  assert t_names == set(emb) - set(names)


def test_the_distill_job_resumes_exactly_after_sigterm(runs, tmp_path):
  root, data_dir, teacher, _, ref = runs
  workdir = str(tmp_path / 'run')
  code, out = preempt(
    _cmd(workdir, data_dir, teacher, '--config.debug_sleep_secs=0.3'),
    'step 3/',
    cwd=ROOT,
    env=_env(),
  )
  assert code == 0, out
  assert 'Distillation (guidance): the teacher is' in out, out
  saved = [l for l in out.splitlines() if l.startswith('Preempted: saved step')]
  assert saved, out
  k = int(saved[0].split()[3].rstrip(';'))
  assert 3 <= k < STEPS

  done = subprocess.run(
    _cmd(workdir, data_dir, teacher), cwd=ROOT, env=_env(), capture_output=True, text=True
  )
  assert done.returncode == 0, done.stdout + done.stderr
  assert f'at step {k}.' in done.stdout and f'step {k + 1}/{STEPS}' in done.stdout
  ckpt = checkpointing.Checkpointer(workdir)
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), ref.state
  )
  got = ckpt.restore(STEPS, abstract)
  ckpt.close()
  assert int(got.step) == STEPS
  for a, b in ((got.params, ref.state.params), (got.ema_params, ref.state.ema_params)):
    assert _leaves_equal(jax.device_get(a), jax.device_get(b))
  assert _leaves_equal(jax.device_get(got.opt_state), jax.device_get(ref.state.opt_state))


@pytest.mark.slow  # the distill CLI end to end (halving, export, sample): make test-all
def test_halving_from_the_guidance_student_exports_a_few_step_stage(runs, tmp_path):
  root, data_dir, teacher, student, _ = runs
  half = str(tmp_path / 'half')
  res = run_module(
    'distill',
    '--config=configs/digits.py:stage=base,tiny=True',
    f'--workdir={half}',
    f'--teacher={student}',
    '--phase=halving',
    '--student_steps=4',
    '--config.num_steps=3',
    '--config.sample_every=0',
    '--config.sample.sampler=stepback',
    f'--config.data.dir={data_dir}',
    cwd=ROOT,
    env=_env(),
  )
  assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
  assert 'Distillation (halving)' in res.stdout
  out = tmp_path / 'cascade'
  res = run_module('export_cascade', f'--run={half}', f'--output={out}', cwd=ROOT, env=_env())
  assert res.returncode == 0, res.stderr[-3000:]
  with open(out / 'base' / 'stage.json') as f:
    meta = json.load(f)
  assert meta['unet']['guidance_embed'] and meta['sampler']['steps'] == 4
  assert meta['sampler']['sampler'] == 'stepback'  # the run's sample.sampler
  assert meta['distilled'] == {'phase': 'halving', 'w_min': 0.0, 'w_max': 5.0, 'steps': 4}
  pipe = export.load_cascade(str(out))
  stage = pipe.stages[0]
  emb, mask = pipe.text_encoder(['a red 3 moving left', 'a blue 7 moving up'])
  sample = jax.jit(lambda p, k: sampling.sample_stage(stage, p, k, 2, text_emb=emb, text_mask=mask))
  video = sample(stage.params, jax.random.key(0))
  assert video.shape == (2, 8, 16, 16, 3) and np.isfinite(np.asarray(video)).all()

  # Teacher and student in one cascade: the student is sampled unless asked otherwise.
  both = tmp_path / 'both'
  res = run_module(
    'export_cascade', f'--run={teacher}', f'--student={half}', f'--output={both}', env=_env()
  )
  assert res.returncode == 0, res.stderr[-3000:]
  with open(both / 'cascade.json') as f:
    assert json.load(f)['students'] == {'base': 'base_student'}
  fast, full = export.load_cascade(str(both)), export.load_cascade(str(both), students=False)
  assert fast.stages[0].unet.guidance_embed and fast.stages[0].sampler.steps == 4
  assert not full.stages[0].unet.guidance_embed
  _, t_ema, _ = export.read_training_run(teacher)
  assert _leaves_equal(full.stages[0].params, t_ema)
  assert _leaves_equal(fast.stages[0].params, stage.params)
  # A run that was not distilled is no student.
  res = run_module(
    'export_cascade', f'--run={teacher}', f'--student={teacher}', f'--output={tmp_path / "x"}'
  )
  assert res.returncode != 0 and 'not a distillation run' in res.stderr

  # A cascade as a halving phase's --teacher: its student of the stage is the teacher,
  # and the new student starts from it; a cascade without students is refused by name.
  def halve(source, workdir):
    return run_module(
      'distill',
      '--config=configs/digits.py:stage=base,tiny=True',
      f'--workdir={tmp_path / workdir}',
      f'--teacher={source}',
      '--phase=halving',
      '--student_steps=2',
      '--config.num_steps=1',
      '--config.sample_every=0',
      f'--config.data.dir={data_dir}',
      cwd=ROOT,
      env=_env(),
    )

  res = halve(both, 'from_cascade')
  assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
  assert f'the teacher is exported stage {both / "base_student"}' in res.stdout
  assert f'Warm start: params and EMA from exported stage {both / "base_student"}' in res.stdout
  res = halve(tmp_path / 'cascade', 'no_student')
  assert res.returncode == 1 and 'holds no distilled student' in res.stderr
  assert 'Traceback' not in res.stderr


def test_the_distill_command_refuses_what_it_cannot_run(runs, tmp_path):
  _, data_dir, teacher, student, _ = runs
  missing = run_module(
    'distill',
    '--config=configs/digits.py:stage=base,tiny=True',
    f'--workdir={tmp_path / "a"}',
    f'--teacher={tmp_path / "nothing"}',
    '--phase=guidance',
    cwd=ROOT,
  )
  assert missing.returncode != 0 and 'no such cascade, stage or workdir' in missing.stderr
  assert 'Traceback' not in missing.stderr
  # A halving phase needs a teacher that reads the guidance weight: a plain stage misfits.
  plain = run_module(
    'distill',
    '--config=configs/digits.py:stage=base,tiny=True',
    f'--workdir={tmp_path / "b"}',
    f'--teacher={teacher}',
    '--phase=halving',
    '--config.num_steps=2',
    f'--config.data.dir={data_dir}',
    cwd=ROOT,
    env=_env(),
  )
  assert plain.returncode == 1, plain.stderr[-2000:]
  assert 'distill.teacher' in plain.stderr and 'guidance_emb' in plain.stderr
  assert 'Traceback' not in plain.stderr


def test_cascade_json_students_are_validated():
  meta = {'format': export.FORMAT, 'stages': ['base', 'ssr'], 'text': None}
  export._check_cascade_meta('c.json', {**meta, 'students': {'base': 'base_student'}})
  for bad in ({'tsr': 'tsr_student'}, {'base': ''}, ['base']):
    with pytest.raises(export.ExportError, match='"students"'):
      export._check_cascade_meta('c.json', {**meta, 'students': bad})


def test_configure_distill_sets_up_the_student_and_refuses_bad_flags(tmp_path):
  from imagen_video_jax.cli import _checks as checks

  teacher = tmp_path / 'teacher'
  teacher.mkdir()
  c = _config(str(tmp_path / 'data'))
  configure_distill(c, str(teacher), 'halving', 4)
  assert (c.distill.phase, c.distill.teacher, c.init_from) == (
    'halving',
    str(teacher),
    str(teacher),
  )
  assert c.model.guidance_embed and c.distill.student_steps == 4 and c.sample.steps == 4
  g = _config(str(tmp_path / 'data'))
  steps = g.sample.steps
  configure_distill(g, str(teacher), 'guidance', None)
  assert g.sample.steps == steps  # only a halving student samples with fewer steps
  with pytest.raises(checks.Refusal, match='no such cascade'):
    configure_distill(_config(''), str(tmp_path / 'nothing'), 'guidance', None)
  with pytest.raises(checks.Refusal, match='student_steps must be >= 1'):
    configure_distill(_config(''), str(teacher), 'halving', 0)


def test_students_are_added_to_a_copy_of_an_exported_cascade(runs, tmp_path):
  """`export_cascade --cascade=DIR --student=RUN`: what ships students of a cascade whose
  training runs are gone (the shipped one)."""
  _, _, teacher, student, _ = runs
  teachers = tmp_path / 'teachers'
  res = run_module('export_cascade', f'--run={teacher}', f'--output={teachers}', env=_env())
  assert res.returncode == 0, res.stderr[-3000:]
  before = {p: p.read_bytes() for p in teachers.rglob('*') if p.is_file()}
  both = tmp_path / 'both'
  res = run_module(
    'export_cascade', f'--cascade={teachers}', f'--student={student}', f'--output={both}'
  )
  assert res.returncode == 0, res.stderr[-3000:]
  assert 'students: base (ddim)' in res.stdout
  assert {p: p.read_bytes() for p in teachers.rglob('*') if p.is_file()} == before  # untouched
  with open(both / 'cascade.json') as f:
    meta = json.load(f)
  with open(teachers / 'cascade.json') as f:
    old = json.load(f)
  assert meta['students'] == {'base': 'base_student'}
  assert meta['world'] == old['world'] and meta['text'] == old['text']
  full = export.load_cascade(str(both), students=False)  # digests of every file checked
  fast = export.load_cascade(str(both))
  assert _leaves_equal(full.stages[0].params, export.load_cascade(str(teachers)).stages[0].params)
  _, s_ema, _ = export.read_training_run(student)
  assert _leaves_equal(fast.stages[0].params, s_ema) and fast.stages[0].distilled
  # --student_dtype=float16: the student's file at half the size, read back as float32
  # equal to its EMA rounded to float16; the teachers' files the same bytes as before.
  half = tmp_path / 'half'
  res = run_module(
    'export_cascade',
    f'--cascade={teachers}',
    f'--student={student}',
    '--student_dtype=float16',
    f'--output={half}',
  )
  assert res.returncode == 0, res.stderr[-3000:]
  p16, p32 = (d / 'base_student' / export.PARAMS_FILE for d in (half, both))
  assert p16.stat().st_size < 0.55 * p32.stat().st_size
  assert (half / 'base' / export.PARAMS_FILE).read_bytes() == (
    both / 'base' / export.PARAMS_FILE
  ).read_bytes()
  got = params_io.flatten_params(export.load_cascade(str(half)).stages[0].params)
  for k, v in params_io.flatten_params(s_ema).items():
    assert got[k].dtype == np.float32
    np.testing.assert_array_equal(got[k], np.asarray(v).astype(np.float16).astype(np.float32))
  emb_a, _ = full.text_encoder(['a red 3 moving left'])
  emb_b, _ = export.load_cascade(str(teachers)).text_encoder(['a red 3 moving left'])
  np.testing.assert_array_equal(np.asarray(emb_a), np.asarray(emb_b))

  # Refused, with the reason: a full output, a run that was not distilled, both sources.
  again = run_module(
    'export_cascade', f'--cascade={teachers}', f'--student={student}', f'--output={both}'
  )
  assert again.returncode != 0 and 'already holds a cascade' in again.stderr
  plain = run_module(
    'export_cascade', f'--cascade={teachers}', f'--student={teacher}', f'--output={tmp_path / "p"}'
  )
  assert plain.returncode != 0 and 'not a distillation run' in plain.stderr
  mixed = run_module(
    'export_cascade',
    f'--cascade={teachers}',
    f'--run={teacher}',
    f'--student={student}',
    f'--output={tmp_path / "m"}',
  )
  assert mixed.returncode != 0 and 'not both' in mixed.stderr
  for r in (again, plain, mixed):
    assert 'Traceback' not in r.stderr
  # A student of another world than the cascade's (here the cascade claims v1).
  other = tmp_path / 'other'
  shutil.copytree(teachers, other)
  meta_v1 = {**old, 'world': {'name': 'digits', 'version': 1}}
  (other / 'cascade.json').write_text(json.dumps(meta_v1))
  with pytest.raises(export.ExportError, match="cascade's own world"):
    export.add_students(str(other), [student], str(tmp_path / 'w'))
  # One student per stage: a second of the same stage is refused, not silently dropped.
  with pytest.raises(export.ExportError, match="two students of the stage 'base'"):
    export.add_students(str(teachers), [student, student], str(tmp_path / 't'))
  with pytest.raises(export.ExportError, match="two students of the stage 'base'"):
    export.export_training_runs([teacher], str(tmp_path / 'u'), student_runs=[student, student])


def test_export_sets_a_students_sampler(runs, tmp_path):
  """`export_cascade --student_sampler=STAGE:SAMPLER`: a student's default sampler chosen
  at export, for a --student run or a student the --cascade already holds; nothing else
  in the cascade changes."""
  _, _, teacher, student, _ = runs
  both = tmp_path / 'both'
  res = run_module(
    'export_cascade', f'--run={teacher}', f'--student={student}', f'--output={both}', env=_env()
  )
  assert res.returncode == 0, res.stderr[-3000:]
  assert export.load_cascade(str(both)).stages[0].sampler.sampler == 'ddim'
  set_ = tmp_path / 'set'
  res = run_module(
    'export_cascade',
    f'--cascade={both}',
    '--student_sampler=base:stepback',
    f'--output={set_}',
    env=_env(),
  )
  assert res.returncode == 0, res.stderr[-3000:]
  assert 'students: base (stepback)' in res.stdout
  fast, full = export.load_cascade(str(set_)), export.load_cascade(str(set_), students=False)
  old = export.load_cascade(str(both))
  assert fast.stages[0].sampler == dataclasses.replace(old.stages[0].sampler, sampler='stepback')
  assert full.stages[0].sampler.sampler == 'ddim'  # the teacher keeps its own
  for d in ('base', 'base_student'):
    assert (set_ / d / export.PARAMS_FILE).read_bytes() == (
      both / d / export.PARAMS_FILE
    ).read_bytes()
  # With a --student run in the same command (export_training_runs).
  ran = export.export_training_runs(
    [teacher], str(tmp_path / 'ran'), student_runs=[student], student_samplers={'base': 'ancestral'}
  )
  assert export.load_cascade(ran).stages[0].sampler.sampler == 'ancestral'

  # Refused, with the reason and no traceback.
  def bad(*flags):
    r = run_module('export_cascade', *flags, f'--output={tmp_path / "bad"}', env=_env())
    assert r.returncode != 0 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / 'bad' / 'cascade.json').exists()
    return r.stderr

  assert 'no such student' in bad(f'--cascade={both}', '--student_sampler=ssr:stepback')
  assert 'STAGE:SAMPLER' in bad(f'--cascade={both}', '--student_sampler=base:euler')
  assert 'STAGE:SAMPLER' in bad(f'--cascade={both}', '--student_sampler=stepback')
  assert 'twice' in bad(
    f'--cascade={both}', '--student_sampler=base:ddim', '--student_sampler=base:stepback'
  )
  assert 'no such student' in bad(f'--cascade={set_}', '--student_sampler=tsr:ddim')
  with pytest.raises(export.ExportError, match="student of 'base': sampler must be one of"):
    export.add_students(str(both), [], str(tmp_path / 'lib'), student_samplers={'base': 'euler'})
  assert not (tmp_path / 'lib' / 'cascade.json').exists()
