"""`train_and_evaluate(config, workdir)`: one stage of the cascade, resumable.

Sections: config -> mesh -> data and text -> state (init or resume) -> the loop
(step, non-finite guard, metrics, samples, checkpoints, preemption).

Resuming is exact: the state, the grain iterator's position and the config are saved
together, and every step's randomness is `fold_in(train_key, step)`, so 10 steps, a
restart and 10 more equal 20 straight steps bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import sys
import time
from typing import Any

import jax
import numpy as np
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec

from imagen_video_jax import parallel, stage as stage_lib
from imagen_video_jax.data import pipeline as pipeline_lib
from imagen_video_jax.data import prepare
from imagen_video_jax.diffusion import frame_cond as frame_cond_lib
from imagen_video_jax.models import t5 as t5_lib
from imagen_video_jax.models import unet as unet_lib
from imagen_video_jax.training import checkpointing, metrics as metrics_lib, state as state_lib
from imagen_video_jax.training import step as step_lib


class ConfigError(ValueError):
  """A config value the job cannot run with (the message says which and why)."""


class NonFiniteError(RuntimeError):
  """Too many consecutive steps had a non-finite loss, gradients or update."""


class DataError(ValueError):
  """A batch the model cannot take (the message says which values and why)."""


@dataclasses.dataclass
class TrainResult:
  """What `train_and_evaluate` returns: the final state, its step, the logged metrics,
  whether it stopped early (a preemption or `stop_after_secs`; it saved first), and the
  data iterator's position."""

  state: state_lib.TrainState
  step: int
  history: list  # one dict of metrics per logged step
  preempted: bool
  data_state: Any = None  # the grain iterator's position after the last step


# ----------------------------------------------------------------------------- config
def validate(config) -> stage_lib.Stage:
  """The stage the config describes (`stage.from_config`); any problem is one ConfigError."""
  try:
    stage = stage_lib.from_config(config)
    pipeline_lib.PipelineConfig(
      batch_size=int(config.data.batch_size), image_fraction=float(config.data.image_fraction)
    )
    crop = data_crop(config)
  except (TypeError, ValueError, KeyError, AttributeError) as e:
    raise ConfigError(f'invalid config: {e}') from None
  model, spec = stage.unet, stage.spec
  problems = crop.problems(spec)
  if not problems:
    _, h, w = crop.size(spec)
    f = model.downsample_factor
    if (h, w) != (spec.height, spec.width) and (h % f or w % f):
      problems.append(
        f"data.crop height x width {h}x{w} is not divisible by {f}, the U-Net's "
        f'downsample factor ({len(model.levels)} levels); use crop sizes that are '
        f'multiples of {f}'
      )
    problems += split_problems(config.get('mesh') or {}, crop.size(spec))
  if config.num_steps < 1:
    problems.append(f'num_steps must be >= 1, got {config.num_steps}')
  if config.log_every < 1 or config.checkpoint_every_steps < 1:
    problems.append('log_every and checkpoint_every_steps must be >= 1')
  if config.max_nonfinite_in_a_row < 1:
    problems.append('max_nonfinite_in_a_row must be >= 1')
  if spec.is_sr != bool(model.cond_channels) or spec.is_sr != model.cond_augment:
    problems.append(
      f'stage kind {spec.kind!r} needs model.cond_channels='
      f'{3 if spec.is_sr else 0} and cond_augment={spec.is_sr}'
    )
  if (
    model.text_dim is not None
    and config.text.source != 'cache'
    and (model.text_dim != config.text.get('d_model', model.text_dim))
  ):
    problems.append(f'model.text_dim {model.text_dim} != text.d_model {config.text.d_model}')
  trainable = config.optim.get('trainable', 'all')
  if trainable not in state_lib.TRAINABLE:
    problems.append(
      f'optim.trainable {trainable!r}: use one of '
      + ', '.join(repr(t) for t in state_lib.TRAINABLE)
    )
  elif trainable == 'temporal' and all(lv.temporal == 'none' for lv in model.levels):
    problems.append(
      "optim.trainable='temporal' trains only the temporal layers, but every level of "
      "model.levels has temporal='none' (an image U-Net): nothing would train"
    )
  if config.text.source not in ('t5_random', 't5', 'cache'):
    problems.append(f"text.source {config.text.source!r}: use 't5_random', 't5' or 'cache'")
  problems += distill_problems(config, model)
  try:
    strides = frame_strides(config)
    pipeline_lib.PipelineConfig(batch_size=1, frame_strides=strides)
  except ValueError as e:
    problems.append(str(e))
    strides = ()
  if model.fps_embed and not strides:
    problems.append(
      'model.fps_embed reads each row\'s frame rate: set data.frame_strides (e.g. "1,2"), '
      'the strides whose frame rates it learns'
    )
  if model.frame_cond:
    try:
      frame_cond_lib.FrameCondConfig.from_config(config.frame_cond)
    except (TypeError, ValueError, KeyError, AttributeError) as e:
      problems.append(str(e))
  if problems:
    raise ConfigError('invalid config: ' + '; '.join(problems))
  return stage


def distill_problems(config, model: unet_lib.UNetConfig) -> list[str]:
  """Why `config.distill` cannot run (a distillation phase's needs), or []."""
  d = config.get('distill') or {}
  phase = str(d.get('phase', '') or '')
  if not phase:
    return []
  if phase not in ('guidance', 'halving'):
    return [f"distill.phase {phase!r}: use 'guidance', 'halving' or '' (plain training)"]
  problems = []
  if not str(d.get('teacher', '')):
    problems.append(f'distill.phase={phase!r} needs distill.teacher (the model it learns from)')
  if model.text_dim is None:
    problems.append('distillation folds classifier-free guidance: the stage must read text')
  if not model.guidance_embed:
    problems.append(
      f'distill.phase={phase!r}: the student reads the guidance weight; set '
      'model.guidance_embed=True'
    )
  try:
    step_lib.distill_config(config)
  except (TypeError, ValueError, KeyError) as e:
    problems.append(f'distill: {e}')
  if phase == 'halving' and int(config.sample.steps) != int(d.get('student_steps', 0)):
    problems.append(
      f'distill.phase=halving: sample.steps ({config.sample.steps}) should be the '
      f"student's distill.student_steps ({d.get('student_steps')})"
    )
  return problems


def split_problems(mesh, clip: tuple[int, int, int]) -> list[str]:
  """Why a mesh's `time` / `space` sizes cannot split training clips of `clip` (frames,
  height, width). `time` splits every level's frames (the U-Net never halves them);
  `space` the top level's rows at least (deeper levels keep theirs whole where it no
  longer divides them)."""
  problems = []
  for axis, length, what in (('time', clip[0], 'frames'), ('space', clip[1], 'rows (height)')):
    n = int(mesh.get(axis, 1))
    if n > 1 and length % n:
      problems.append(
        f"mesh.{axis}={n} does not divide the training clips' {length} {what}; use a "
        f'divisor of {length} (or 1)'
      )
  return problems


def data_crop(config) -> pipeline_lib.Crop:
  """The training crop `config.data.crop` asks for (absent: none)."""
  crop = config.data.get('crop')
  return pipeline_lib.Crop() if crop is None else pipeline_lib.Crop(**dict(crop))


def train_clip_size(config, spec: stage_lib.StageSpec) -> tuple[int, int, int]:
  """(frames, height, width) of the clips the train step sees: the stage's, or its crop's."""
  return data_crop(config).size(spec)


# ------------------------------------------------------------------------------- mesh
def make_mesh(mesh_cfg):
  """(mesh, logical rules, batch sharding) from the config's `mesh` section."""
  try:
    mesh = parallel.mesh_from_config(
      {k: v for k, v in dict(mesh_cfg).items() if k != 'constrain_activations'}
    )
  except ValueError as e:
    raise ConfigError(str(e)) from None
  return mesh, parallel.DEFAULT_RULES, parallel.batch_sharding(mesh)


# ----------------------------------------------------------------------- data, text
def prepare_data(config, workdir: str) -> str:
  """The data directory: the Moving Digits world made on first use, or `data.dir`."""
  if config.data.world != 'digits':
    return config.data.dir
  try:
    return prepare.prepare_digits(config, workdir)
  except prepare.DataDirError as e:
    raise ConfigError(str(e)) from None


def tokenizer_path(config, data_dir: str) -> str | None:
  """The spiece.model the job tokenizes with (None: no text, or cached embeddings)."""
  t = config.text
  if config.model.text_dim is None or t.source == 'cache':
    return None
  if t.source == 't5':
    return t.tokenizer or os.path.join(t.t5_dir, 'spiece.model')
  return t.tokenizer or os.path.join(data_dir, prepare.VOCAB_FILE)


def fingerprints(config, data_dir: str) -> dict:
  """sha256 of the files the config names but does not hold (checkpointed; a resume
  with other files is refused): the tokenizer, and the data's dataset_info.json."""
  out = {
    'tokenizer': checkpointing.fingerprint(tokenizer_path(config, data_dir)),
    'data': checkpointing.fingerprint(data_dir and os.path.join(data_dir, 'dataset_info.json')),
  }
  return {k: v for k, v in out.items() if v is not None}


def make_text(config, data_dir: str, mesh):
  """(tokenizer for the pipeline, embedder for the pipeline, T5 module, T5 params)."""
  from imagen_video_jax.text.tokenizer import Tokenizer

  t = config.text
  if config.model.text_dim is None:
    return None, None, None, None
  if t.source == 'cache':
    from imagen_video_jax.text.cache import CacheReader

    return None, CacheReader(t.cache_dir).lookup, None, None
  if t.source == 't5':
    from imagen_video_jax.text import checkpoints

    t5_cfg, params = checkpoints.load_t5(t.t5_dir, mesh=mesh)
  else:  # t5_random: the tiny frozen random T5 of the Moving Digits world
    t5_cfg = stage_lib.text_from_config(t)
    params = nn.unbox(t5_lib.init_params(t5_cfg, int(t.init_seed)))
    params = jax.device_put(params, NamedSharding(mesh, PartitionSpec()))
  path = tokenizer_path(config, data_dir)
  tok = Tokenizer(path)
  if tok.vocab_size > t5_cfg.vocab_size:
    raise ConfigError(
      f'tokenizer {path} has {tok.vocab_size} pieces > T5 vocab_size {t5_cfg.vocab_size}'
    )
  tokenizer = functools.partial(tok, max_length=int(t.max_length), warn=False)
  return tokenizer, None, t5_lib.T5Encoder(t5_cfg), params


def frame_strides(config) -> tuple[int, ...]:
  """`data.frame_strides` ('1,2', or '' for none) as a tuple of strides."""
  text = str(config.data.get('frame_strides', '') or '')
  try:
    return tuple(int(s) for s in text.split(',') if s.strip())
  except ValueError:
    raise ValueError(
      f"data.frame_strides {text!r}: give comma-separated strides, e.g. '1,2'"
    ) from None


def make_data(config, spec, data_dir, tokenizer, embedder):
  d = config.data
  pcfg = pipeline_lib.PipelineConfig(
    batch_size=int(d.batch_size),
    image_fraction=float(d.image_fraction),
    seed=int(d.seed),
    num_threads=int(d.num_threads),
    prefetch_rows=int(d.prefetch_rows),
    worker_count=int(d.worker_count),
    skip_bad_records=bool(d.get('skip_bad_records', False)),
    crop=data_crop(config),
    frame_strides=frame_strides(config),
  )
  f = pcfg.image_fraction
  return pipeline_lib.make_pipeline(
    spec,
    pcfg,
    data_dir if f < 1 else None,
    data_dir if f > 0 else None,
    tokenizer=tokenizer,
    embedder=embedder,
  )


# ------------------------------------------------------------------ compiled functions
_CACHE: dict = {}  # compiled step/sample functions, reused by runs with the same config


def _key(kind: str, config, mesh) -> str:
  c = checkpointing.config_to_dict(config)
  for name in checkpointing.RESUMABLE_FIELDS:
    if '.' not in name:
      c.pop(name, None)
  # Which weights a run started from does not change the programs, but whether it
  # started from trained ones does (a warm start's EMA has no warm-up: step.py).
  c['warm_started'] = bool(config.get('init_from'))
  c['inflated'] = c['warm_started'] and bool(config.get('init_inflate', False))
  return json.dumps([kind, c, mesh.devices.shape, str(mesh.devices.flat[0])], sort_keys=True)


def _started_as(config, saved: dict):
  """The config with the `init_from` (and `init_inflate`) the run was started with (its
  checkpoints carry them).

  `init_from` is read at step 0 only, so a resumed run may drop or change it; but
  whether the run began from trained weights (and which of them were fresh) decides its
  EMA warm-up for good, so a resume keeps the original values (and saves them on).
  """
  origin = saved.get('init_from', '') or ''
  inflate = bool(saved.get('init_inflate', False))
  if (config.get('init_from', '') or '') == origin and bool(
    config.get('init_inflate', False)
  ) == inflate:
    return config
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.init_from = origin
    config.init_inflate = inflate
  return config


def check_frame_ids(batch: dict) -> None:
  """Raises DataError unless every frame id is -1 (padding) or a frame index < T."""
  if 'frame_ids' not in batch:
    return
  fids, t = np.asarray(batch['frame_ids']), np.shape(batch['video'])[1]
  bad = (fids < -1) | (fids >= t)
  if bad.any():
    values = sorted({int(v) for v in fids[bad]})
    raise DataError(
      f'a batch has frame_ids {values[:10]} outside [-1, {t - 1}] (T={t} frames, -1 = '
      f'padding) at rows {sorted({int(r) for r in np.nonzero(bad)[0]})[:10]}: frames with '
      'out-of-range ids would share noise levels. Check the data pipeline.'
    )


def _place(batch: dict, sharding) -> dict:
  check_frame_ids(batch)
  out = {}
  for k, v in batch.items():
    if k == 'captions':
      continue
    out[k] = jax.make_array_from_process_local_data(sharding, np.asarray(v))
  return out


# ------------------------------------------------------------------------------- loop
def train_and_evaluate(config, workdir: str) -> TrainResult:
  """Trains one stage as configured, resuming from `workdir` if it holds checkpoints."""
  jax.config.update('jax_threefry_partitionable', True)
  stage = validate(config)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  mesh, rules, batch_sharding = make_mesh(config.mesh)

  ckpt = checkpointing.Checkpointer(workdir, keep=int(config.keep_checkpoints))
  try:
    return _run(config, workdir, stage, mesh, rules, batch_sharding, ckpt, is_main)
  finally:
    ckpt.close()  # after any pending async save has finished


def _run(config, workdir, stage, mesh, rules, batch_sharding, ckpt, is_main) -> TrainResult:
  replicated = NamedSharding(mesh, PartitionSpec())
  latest = ckpt.newest_good_step()  # damaged newer ones are reported and set aside
  if latest is not None:  # refuse a different run before doing any work
    ckpt.check_config(latest, config)
    config = _started_as(config, ckpt.saved_config(latest))

  # ---- data and text
  model_cfg, spec = stage.unet, stage.spec
  data_dir = prepare_data(config, workdir)
  prints = fingerprints(config, data_dir)
  if latest is not None:
    ckpt.check_fingerprints(latest, prints)
  tokenizer, embedder, t5_model, t5_params = make_text(config, data_dir, mesh)
  data_iter = iter(make_data(config, spec, data_dir, tokenizer, embedder))

  # ---- model, optimizer, state
  model = unet_lib.VideoUNet(model_cfg)
  tx, schedule = state_lib.make_optimizer(config.optim)
  text_len = int(config.text.max_length)
  boxed_init = unet_lib.init_fn(
    model_cfg, frames=spec.frames, height=spec.height, width=spec.width, text_len=text_len
  )
  init_key, train_key = jax.random.split(jax.random.key(int(config.seed)))
  abstract, shardings = state_lib.state_shardings(boxed_init, tx, mesh, rules)
  # A distillation's teacher first: its misfit is the one to report.
  teacher_model, teacher_params = make_teacher(config, model_cfg, spec, mesh, rules)
  # What the step reads but never updates: the T5 (and a distillation's teacher).
  frozen = [t5_params] + ([teacher_params] if teacher_params is not None else [])
  if latest is not None:
    state, latest = _restore(ckpt, latest, abstract, data_iter, config, prints)
    if is_main:
      print(f'Resumed from {ckpt.directory} at step {latest}.', flush=True)
  else:
    ik = _key('init', config, mesh)
    if ik not in _CACHE:
      _CACHE[ik] = state_lib.make_init_fn(boxed_init, tx, shardings)
    state = _CACHE[ik](init_key)
    if config.get('init_from'):  # a new run from trained weights (fresh optimizer)
      from imagen_video_jax.training import warm_start

      try:
        state = warm_start.warm_start(state, abstract, config, model_cfg)
      except warm_start.WarmStartError as e:
        raise ConfigError(str(e)) from None

  # Trace under the logical rules; with mesh.constrain_activations also under the mesh,
  # so the models' activation constraints apply (else XLA propagates the shardings of
  # the state and the batch-sharded inputs).
  with parallel.mesh_context(
    mesh, rules, constrain_activations=bool(config.mesh.get('constrain_activations', False))
  ):
    ck = _key('step', config, mesh)
    if ck not in _CACHE:
      fn = step_lib.make_train_step(
        config, model, t5_model, tx, schedule, train_key, teacher_model=teacher_model
      )
      # State in its own shardings (donated: updated in place), the batch split over
      # data x fsdp, the frozen T5 (and a distillation's teacher) where it was loaded
      # (never gathered per step).
      _CACHE[ck] = jax.jit(
        fn,
        in_shardings=(shardings, batch_sharding)
        + tuple(replicated if p is None else jax.tree.map(lambda x: x.sharding, p) for p in frozen),
        out_shardings=(shardings, replicated),
        donate_argnums=0,
      )
    train_step = _CACHE[ck]
    sample_fn = None
    if int(config.sample_every) > 0:
      n = min(int(config.sample.num), int(config.data.batch_size))
      sk = _key('sample', config, mesh)
      if sk not in _CACHE:
        _CACHE[sk] = jax.jit(step_lib.make_sample_fn(stage, t5_model, n), out_shardings=replicated)
      sample_fn = _CACHE[sk]

    return _loop(
      config,
      workdir,
      state,
      data_iter,
      train_step,
      sample_fn,
      ckpt,
      frozen,
      batch_sharding,
      stage,
      is_main,
      prints,
    )


def make_teacher(config, model_cfg, spec, mesh, rules):
  """(teacher model, its params placed like the student's) of a distillation phase
  (`config.distill.teacher`: an exported cascade or stage, or a training workdir's EMA);
  (None, None) for plain training. The guidance phase's teacher is the stage without the
  guidance embedding; the halving phase's reads the weight too (the previous student; of
  a cascade, its student of this stage)."""
  import dataclasses as dc

  from imagen_video_jax.training import warm_start

  phase, _ = step_lib.distill_config(config)
  if not phase:
    return None, None
  cfg = dc.replace(model_cfg, guidance_embed=False) if phase == 'guidance' else model_cfg
  boxed = unet_lib.init_fn(
    cfg,
    frames=spec.frames,
    height=spec.height,
    width=spec.width,
    text_len=int(config.text.max_length),
  )
  shapes, shardings = state_lib.param_shardings(boxed, mesh, rules)
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings
  )
  try:
    source, scanned, origin = warm_start.read_source(
      str(config.distill.teacher), config.stage, student=phase == 'halving'
    )
    params = warm_start.fit_params(source, scanned, abstract, cfg, origin)
    if warm_start.fresh_names(params, abstract):  # a frame_cond student's teacher lacks it
      raise warm_start.WarmStartError(
        f'init_from: {origin} has no frame conditioning (model.frame_cond), which the '
        'student has: distil a frame-conditioned stage'
      )
  except warm_start.WarmStartError as e:
    hint = (
      " (a halving phase's teacher reads the guidance weight: a guidance phase's "
      'student, or an earlier halving phase)'
      if phase == 'halving'
      else ''
    )
    raise ConfigError(str(e).replace('init_from', 'distill.teacher') + hint) from None
  if jax.process_index() == 0:
    print(f'Distillation ({phase}): the teacher is {origin}.', flush=True)
  return unet_lib.VideoUNet(cfg), warm_start.place(params, abstract)


def _restore(ckpt, step, abstract, data_iter, config, prints):
  """(state, step) of the newest checkpoint that restores: one that fails although it
  matched its record (or had none) is reported, set aside, and the next one tried."""
  while True:
    try:
      return ckpt.restore(step, abstract, data_iter), step
    except (jax.errors.JaxRuntimeError, MemoryError):
      raise  # the device, not the files
    except Exception as e:  # noqa: BLE001 (orbax and tensorstore raise many kinds)
      why = f'it did not restore ({type(e).__name__}: {str(e).splitlines()[0][:300]})'
    ckpt.set_aside(step, why)
    step = ckpt.newest_good_step()
    if step is None:
      raise checkpointing.CheckpointError(f'no checkpoint in {ckpt.directory} restores')
    ckpt.check_config(step, config)
    ckpt.check_fingerprints(step, prints)


def _loop(
  config,
  workdir,
  state,
  data_iter,
  train_step,
  sample_fn,
  ckpt,
  frozen,
  batch_sharding,
  stage,
  is_main,
  prints,
) -> TrainResult:
  num_steps = int(config.num_steps)
  step = int(state.step)
  nan_steps = {int(s) for s in (config.debug_nan_steps or ())}
  # A resumed run redoes the steps after its checkpoint: their old rows go.
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main, from_step=step)
  progress = metrics_lib.Progress(step, num_steps, int(config.data.batch_size))
  history, preempted, last_save = [], False, time.monotonic()
  # stop_after_secs: this invocation's wall-clock budget (a lease, a Colab session);
  # like a preemption it saves and returns, and the same command resumes.
  started, budget = time.monotonic(), float(config.get('stop_after_secs', 0.0) or 0.0)
  last_saved_step = ckpt.latest_step()
  sigterm = {'got': False}

  def on_sigterm(signum, frame):
    sigterm['got'] = True

  multi = jax.process_count() > 1
  old_handler = None
  try:  # Only the main thread may install handlers. Multi-host: a SIGTERM to any
    # process, or the preemption service's notice, stops every process at one step.
    old_handler = signal.signal(signal.SIGTERM, on_sigterm)
  except ValueError:
    pass

  def agree(flag: bool) -> bool:
    """True on every process if it is True on any (a SIGTERM may reach one host only)."""
    if not multi:
      return flag
    from jax.experimental import multihost_utils

    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))

  def save(s, force=False):
    nonlocal last_save, last_saved_step
    if last_saved_step == s:
      return
    ckpt.save(s, state, data_iter, config, fingerprints=prints, force=force)
    last_save, last_saved_step = time.monotonic(), s

  if is_main:
    print(
      f'Training {config.get("name", config.stage)} in {workdir}: step {step} -> {num_steps}.',
      flush=True,
    )
  step_fn = sample_once = None  # train_step and sample_fn, compiled on first use
  try:
    while step < num_steps:
      batch = next(data_iter)
      if step + 1 in nan_steps:  # test hook: poison this step's batch
        batch = dict(batch, video=np.full_like(batch['video'], np.nan))
      placed = _place(batch, batch_sharding)
      if step_fn is None:  # (multi-process: every process compiles before any runs it)
        step_fn = parallel.compiled_together(train_step, state, placed, *frozen, name='step')
      state, m = step_fn(state, placed, *frozen)
      step += 1
      if config.debug_sleep_secs:
        time.sleep(float(config.debug_sleep_secs))
      in_a_row = int(m['nonfinite_in_a_row'])
      if in_a_row >= int(config.max_nonfinite_in_a_row):
        if last_saved_step is None:
          last = 'No checkpoint was saved yet.'
        elif last_saved_step in ckpt.finite_steps:  # checked when saved or restored
          last = f'The last checkpoint (step {last_saved_step}) is finite.'
        else:
          last = f'The last checkpoint is step {last_saved_step}.'
        raise NonFiniteError(
          f'stopping at step {step}: {in_a_row} steps in a row (steps '
          f'{step - in_a_row + 1}-{step}) had a non-finite loss, gradients or update; '
          f'their updates were skipped. {last} Check the data, lower optim.lr or raise '
          'max_nonfinite_in_a_row.'
        )
      if step % int(config.log_every) == 0 or step == num_steps:
        values = {k: float(v) for k, v in jax.device_get(m).items()}
        values.update(progress.rates(step))
        history.append({'step': step, **values})
        writer.scalars(step, values)
        if is_main:
          print(progress.line(step, values), flush=True)
      if sample_fn is not None and step % int(config.sample_every) == 0:
        key = jax.random.fold_in(jax.random.key(int(config.seed) + 1), step)
        args = (state.ema_params, _place(batch, batch_sharding), frozen[0], key)
        if sample_once is None:
          sample_once = parallel.compiled_together(sample_fn, *args, name='sample')
        videos = np.asarray(jax.device_get(sample_once(*args)))
        # SR stages: the low-resolution conditioning under the samples.
        below = np.asarray(batch['cond'][: len(videos)]) if 'cond' in batch else None
        if below is not None and below.shape != videos.shape:
          below = None  # multi-host: this process's rows are not the sampled ones
        path = writer.video(step, 'samples/ema_ddim', videos, fps=stage.fps, below=below)
        if is_main and path:
          print(f'Samples at step {step}: {path}', flush=True)
      preempted = agree(sigterm['got']) or ckpt.manager.reached_preemption(step)
      out_of_time = budget > 0 and agree(time.monotonic() - started >= budget)
      secs = float(config.checkpoint_every_secs)
      timed = agree(secs > 0 and time.monotonic() - last_save >= secs)
      if (
        preempted
        or out_of_time
        or timed
        or (step % int(config.checkpoint_every_steps) == 0)
        or step == num_steps
      ):
        save(step, force=True)
      ckpt.record_finished()
      if preempted or out_of_time:
        if is_main:
          why = 'Preempted' if preempted else f'Time budget ({budget:g} s) used'
          print(f'{why}: saved step {step}; run the same command to resume.', flush=True)
        preempted = True
        break
  except jax.errors.JaxRuntimeError as e:
    if multi:  # say what it means before jax.distributed aborts this process
      print(
        f'train: process {jax.process_index()} of {jax.process_count()}: a collective '
        f'failed after step {step} ({str(e).splitlines()[0][:200]}). Another process '
        f'probably died. The last checkpoint is step {last_saved_step}: start every '
        'process again with the same command to resume.',
        file=sys.stderr,
        flush=True,
      )
    raise
  finally:
    ckpt.wait()
    writer.close()
    if old_handler is not None:
      signal.signal(signal.SIGTERM, old_handler)
  if is_main and not preempted:
    print(f'Done: step {step}, checkpoints in {ckpt.directory}.', flush=True)
  return TrainResult(
    state=state, step=step, history=history, preempted=preempted, data_state=data_iter.get_state()
  )
