"""Exported cascades: what sampling needs, and nothing of training.

Layout of an exported cascade directory (e.g. `checkpoints/digits/`):

    cascade.json            {"format": ..., "stages": ["base", "tsr", "ssr"],
                             "text": {"dir": "text", "max_length": 32,
                                      "vocabulary": ["a", "red", ...]},
                             "world": {"name": "digits", "version": 2}}
    text/                   a converted T5 encoder + spiece.model (`text.checkpoints.save_t5`)
    base/stage.json         the stage: spec, U-Net config, fps, diffusion, default sampler
    base/params.safetensors its EMA parameters, one tensor per '/'-joined parameter path
    tsr/ ...  ssr/ ...

"students" (optional) maps a stage to a distilled student of it stored beside it
({"base": "base_student"}: few-step sampling, `python -m imagen_video_jax.distill`);
loading takes the students by default and the teachers with `students=False`.

"world" (optional) names the synthetic world the stages were trained on and its version
(Moving Digits v1 bounces, v2 does not): an export refuses runs of different versions, and
the evaluation refuses a judge of another version. Exports without it predate it.

"vocabulary" (optional) lists every word of the stages' training captions when they
come from a closed set (the Moving Digits world's grammar); `CascadePipeline` reports
prompts with other words. Without it the vocabulary is open and the tokenizer judges.

safetensors holds only arrays (no code runs on load) and is small; the JSON is
readable and diffable. Nothing here unpickles anything.

Loading trusts nothing in the directory: every path cascade.json names (stages, the
text dir) must resolve inside it (no '..', absolute paths or symlinks leading out);
cascade.json's "digests" ({relative path: sha256}, written by `save_cascade`) are
checked before anything is read (exports that predate them load unchecked); stage.json
is validated by the stage's own configs; parameters must be finite floats of exactly
the shapes the stage's U-Net has. Every refusal is an `ExportError` naming the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import numpy as np

from imagen_video_jax import params_io
from imagen_video_jax import stage as stage_lib
from imagen_video_jax.cascade import CascadePipeline
from imagen_video_jax.digests import sha256_file
from imagen_video_jax.stage import Stage

FORMAT = 'imagen_video_jax.cascade/1'
CASCADE_FILE = 'cascade.json'
STAGE_FILE = 'stage.json'
PARAMS_FILE = 'params.safetensors'


class ExportError(ValueError):
  """A cascade directory that is missing, incomplete or of another format."""


DIGESTS = 'digests'


def save_stage(directory: str, stage: Stage, dtype: str = 'float32') -> str:
  """Writes stage.json and params.safetensors under `directory`, the parameters stored in
  `dtype` (float32, or float16 at half the size; loading gives float32 either way)."""
  os.makedirs(directory, exist_ok=True)
  try:
    params_io.save_params(os.path.join(directory, PARAMS_FILE), stage.params, dtype)
  except ValueError as e:
    raise ExportError(f'stage {stage.name}: {e}') from None
  with open(os.path.join(directory, STAGE_FILE), 'w') as f:
    json.dump(stage.to_json(), f, indent=2)
  return directory


def inside(root: str, rel: Any, what: str) -> str:
  """root/rel, refused unless `rel` is a relative path that resolves (links followed)
  inside `root` and is not `root` itself."""
  if not isinstance(rel, str) or not rel or os.path.isabs(rel):
    raise ExportError(f'{what} {rel!r} is not a relative path inside {root}')
  real_root = os.path.realpath(root)
  real = os.path.realpath(os.path.join(real_root, rel))
  if real == real_root or os.path.commonpath([real_root, real]) != real_root:
    raise ExportError(f'{what} {rel!r} leads outside {root} (to {real}): refused')
  return os.path.join(root, rel)


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      meta = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ExportError(f'{path} is not readable JSON: {e}') from None
  if not isinstance(meta, dict):
    raise ExportError(f'{path} holds a {type(meta).__name__}, not a JSON object')
  return meta


def check_params(stage: Stage, params: Any, where: str) -> None:
  """Refuses parameters that are not finite floats of exactly the stage's U-Net shapes."""
  import jax
  from flax import linen as nn
  from imagen_video_jax.models import unet as unet_lib

  found = params_io.flatten_params(params)
  for name, a in found.items():
    if a.dtype.kind != 'f':
      raise ExportError(
        f'stage {stage.name} ({where}): parameter {name} is {a.dtype}, not floating point'
      )
    bad = a.size - int(np.count_nonzero(np.isfinite(a)))
    if bad:
      raise ExportError(
        f'stage {stage.name} ({where}): parameter {name} has {bad} non-finite value(s) of {a.size}'
      )
  s = stage.spec
  init = unet_lib.init_fn(stage.unet, frames=s.frames, height=s.height, width=s.width)
  boxed = jax.eval_shape(lambda: init(jax.random.key(0)))
  want = {
    '/'.join(str(k.key) for k in path): tuple(leaf.shape)
    for path, leaf in jax.tree_util.tree_flatten_with_path(nn.unbox(boxed))[0]
  }
  missing, unexpected = sorted(set(want) - set(found)), sorted(set(found) - set(want))
  if missing or unexpected:
    raise ExportError(
      f'stage {stage.name} ({where}) does not fit its U-Net config: missing parameters '
      f'{missing[:5]}, unexpected {unexpected[:5]}'
    )
  for name, shape in want.items():
    if found[name].shape != shape:
      raise ExportError(
        f'stage {stage.name} ({where}): parameter {name} has shape '
        f'{found[name].shape}; its U-Net config expects {shape}'
      )


def load_stage(directory: str) -> Stage:
  """Reads a stage written by `save_stage` (params as numpy arrays), validated."""
  paths = [inside(directory, f, 'the stage file') for f in (STAGE_FILE, PARAMS_FILE)]
  for p in paths:
    if not os.path.isfile(p):
      raise ExportError(f'{directory} is not an exported stage: {os.path.basename(p)} is missing')
  meta_path, params_path = paths
  try:
    stage = Stage.from_json(_read_json(meta_path))
  except KeyError as e:
    raise ExportError(f'{meta_path}: the entry {e} is missing') from None
  except (TypeError, ValueError) as e:
    raise ExportError(f'{meta_path}: {e}') from None
  try:
    params = params_io.load_params(params_path)
  except ValueError as e:
    raise ExportError(str(e)) from None
  check_params(stage, params, params_path)
  # Stored in float16 or float32; the U-Nets' parameters are float32 either way.
  flat = params_io.flatten_params(params)
  params = params_io.unflatten_params(
    {k: v.astype(np.float32, copy=False) for k, v in flat.items()}
  )
  return stage.with_params(params)


def _files(directory: str, meta: Mapping[str, Any], *, text: bool) -> list[str]:
  """The files (relative paths) loading reads: each stage's two files and, with `text`,
  every file under the text dir; each (and the text dir) checked to resolve inside
  `directory`."""
  where = os.path.join(directory, CASCADE_FILE)
  rels = []
  for name in list(meta['stages']) + list((meta.get('students') or {}).values()):
    inside(directory, name, f'{where}: the stage')
    rels += [f'{name}/{STAGE_FILE}', f'{name}/{PARAMS_FILE}']
  if meta.get('text'):
    text_dir = inside(directory, meta['text'].get('dir'), f'{where}: the text dir')
  if text:
    for parent, dirs, files in os.walk(text_dir):
      for f in sorted(dirs + files):
        rel = os.path.relpath(os.path.join(parent, f), directory)
        inside(directory, rel, f'{where}: the text encoder file')
        if f in files:
          rels.append(rel)
  return rels


def caption_words(captions) -> list[str]:
  """The sorted set of words (split on whitespace) of `captions`."""
  return sorted({w for c in captions for w in c.split()})


def save_cascade(
  directory: str,
  stages: list[Stage],
  *,
  text_dir: str | None = 'text',
  max_length: int = 32,
  vocabulary: list[str] | None = None,
  world: Mapping[str, Any] | None = None,
  students: list[Stage] | None = None,
  student_dtype: str = 'float32',
) -> str:
  """Writes every stage and cascade.json, with the sha256 of every file it loads. The
  text encoder (if any) is expected at `directory/text_dir`, written before this by
  `text.checkpoints.save_t5(..., vocab=...)`. `vocabulary`: every word the training
  captions use, when they come from a closed set (recorded in the "text" section).
  `world`: the synthetic world trained on, e.g. {"name": "digits", "version": 2}.
  `students`: distilled students, each named as the stage it stands in for, stored in
  `<name>_student/`, their parameters in `student_dtype` (float16: half the bytes; the
  stages themselves are always float32)."""
  os.makedirs(directory, exist_ok=True)
  names = [st.name for st in stages]
  for st in stages:
    save_stage(os.path.join(directory, st.name), st)
  for st in students or []:
    if st.name not in names:
      raise ExportError(f'student {st.name!r} stands in for no stage of the cascade {names}')
    save_stage(os.path.join(directory, f'{st.name}_student'), st, student_dtype)
  text = None if text_dir is None else {'dir': text_dir, 'max_length': max_length}
  if text is not None and vocabulary is not None:
    text['vocabulary'] = sorted(set(vocabulary))
  meta = {'format': FORMAT, 'stages': [s.name for s in stages], 'text': text}
  if world is not None:
    meta['world'] = dict(world)
  if students:
    meta['students'] = {st.name: f'{st.name}_student' for st in students}
  has_text = text_dir is not None and os.path.isdir(os.path.join(directory, text_dir))
  meta[DIGESTS] = {
    rel: sha256_file(os.path.join(directory, rel)) for rel in _files(directory, meta, text=has_text)
  }
  with open(os.path.join(directory, CASCADE_FILE), 'w') as f:
    json.dump(meta, f, indent=2)
  return directory


def _check_cascade_meta(path: str, meta: Mapping[str, Any]) -> None:
  if meta.get('format') != FORMAT:
    raise ExportError(f'{path} has format {meta.get("format")!r}; this version reads {FORMAT!r}')
  stages = meta.get('stages')
  if not isinstance(stages, list) or not stages or not all(isinstance(n, str) for n in stages):
    raise ExportError(f'{path}: "stages" must be a non-empty list of names; got {stages!r}')
  text = meta.get('text')
  if text is not None:
    length = text.get('max_length') if isinstance(text, dict) else None
    if not isinstance(length, int) or isinstance(length, bool) or not 1 <= length <= 4096:
      raise ExportError(
        f'{path}: "text" must be {{"dir": ..., "max_length": 1..4096}}; got {text!r}'
      )
    words = text.get('vocabulary')
    if words is not None and not (
      isinstance(words, list) and words and all(isinstance(w, str) and w for w in words)
    ):
      raise ExportError(f'{path}: "text"."vocabulary" must be a non-empty list of words')
  students = meta.get('students')
  if students is not None and not (
    isinstance(students, dict)
    and all(k in stages and isinstance(v, str) and v for k, v in students.items())
  ):
    raise ExportError(f'{path}: "students" must map stage names to directories; got {students!r}')
  world = meta.get('world')
  if world is not None and not (
    isinstance(world, dict)
    and isinstance(world.get('name'), str)
    and isinstance(world.get('version'), int)
    and not isinstance(world.get('version'), bool)
  ):
    raise ExportError(f'{path}: "world" must be {{"name": str, "version": int}}; got {world!r}')
  digests = meta.get(DIGESTS)
  if digests is not None and not (
    isinstance(digests, dict) and all(isinstance(v, str) for v in digests.values())
  ):
    raise ExportError(f'{path}: "{DIGESTS}" must map file paths to sha256 hex digests')


def verify_digests(directory: str, meta: Mapping[str, Any], rels: list[str]) -> None:
  """Checks every file cascade.json's digests list, and that `rels` are all listed."""
  digests = meta.get(DIGESTS)
  if digests is None:
    return  # an export that predates digests
  where = os.path.join(directory, CASCADE_FILE)
  unlisted = [r for r in rels if r not in digests]
  if unlisted:
    raise ExportError(f'{where} lists no digest for {unlisted[:5]}: refusing to load them')
  for rel, want in digests.items():
    path = inside(directory, rel, f'{where}: the digested file')
    if not os.path.isfile(path):
      raise ExportError(f'{path} is missing (cascade.json lists its digest)')
    if sha256_file(path) != want:
      raise ExportError(
        f'{path} does not match its sha256 in {where}: the file changed or is corrupt'
      )


def load_cascade(directory: str, *, text_encoder=None, students: bool = True) -> CascadePipeline:
  """A ready CascadePipeline from an exported directory.

  text_encoder: prompts -> (emb, mask); by default the T5 stored in the directory.
  students: sample a stage's distilled student where the cascade holds one (few steps);
    False: the teachers.
  """
  path = os.path.join(directory, CASCADE_FILE)
  if not os.path.isfile(path):
    raise ExportError(
      f'{directory} holds no {CASCADE_FILE}: not an exported cascade '
      '(export one from training checkpoints first)'
    )
  meta = _read_json(path)
  _check_cascade_meta(path, meta)
  own_text = text_encoder is None and bool(meta.get('text'))
  verify_digests(directory, meta, _files(directory, meta, text=own_text))
  chosen = dict(meta.get('students') or {}) if students else {}
  stages = [load_stage(os.path.join(directory, chosen.get(n, n))) for n in meta['stages']]
  if own_text:
    from imagen_video_jax.text.encoder import TextEncoder
    import jax.numpy as jnp

    text_encoder = TextEncoder.load(
      os.path.join(directory, meta['text']['dir']),
      max_length=meta['text']['max_length'],
      out_dtype=jnp.float32,
    )
  vocabulary = (meta.get('text') or {}).get('vocabulary')
  return CascadePipeline(stages, text_encoder, vocabulary=vocabulary, world=meta.get('world'))


# ---------------------------------------------------------------------------------
# From a training run (orbax checkpoints of `python -m imagen_video_jax.train`).
# ---------------------------------------------------------------------------------
def _check_workdir(workdir: str) -> None:
  if not os.path.isdir(os.path.join(os.path.abspath(workdir), 'checkpoints')):
    raise ExportError(f'{workdir} holds no checkpoints/: not a training workdir')


WEIGHTS = ('ema', 'trained')


def read_training_run(
  workdir: str, step: int | None = None, weights: str = 'ema'
) -> tuple[dict, Any, int]:
  """(saved config dict, params, step) of a training run's latest (or given) checkpoint:
  its EMA params, or with weights='trained' the optimiser's own (what a run that has just
  moved to new data has learnt, before its EMA catches up).

  Works on any machine: a run saved from a device mesh or by several processes is
  read whole onto this host (`Checkpointer.restore_to_host`).
  """
  from imagen_video_jax.training import checkpointing

  _check_workdir(workdir)
  ckpt = checkpointing.Checkpointer(workdir, async_save=False)
  try:
    step = ckpt.latest_step() if step is None else step
    if step is None:
      raise ExportError(f'{ckpt.directory} has no finished checkpoint yet')
    if weights not in WEIGHTS:
      raise ExportError(f'weights must be one of {WEIGHTS}; got {weights!r}')
    state = ckpt.restore_to_host(step)
    return ckpt.saved_config(step), state['ema_params' if weights == 'ema' else 'params'], int(step)
  finally:
    ckpt.close()


def _export_text(
  config: Mapping[str, Any], workdir: str, output: str, t5_dir: str | None = None
) -> int | None:
  """Writes the run's text encoder (T5 + spiece.model) to output/ as `save_t5` does.

  Returns the text length the stages were trained with when it is not the config's
  (a cache's own `max_length`), else None.
  """
  import shutil

  from imagen_video_jax.data import prepare
  from imagen_video_jax.models import t5 as t5_lib
  from imagen_video_jax.text import checkpoints as t5_checkpoints

  t = config['text']
  if t['source'] == 'cache':
    # The stages read embeddings a T5 made offline; sampling needs that very T5.
    t5_dir = t5_dir or t.get('t5_dir')
    if not t5_dir:
      raise ExportError(
        "the run was trained on cached T5 embeddings (text.source='cache'); "
        'sampling needs the T5 that made them: pass --t5=DIR, the converted '
        'encoder that encode_text read'
      )
    length = check_cache_encoder(t5_dir, t.get('cache_dir'))
    shutil.copytree(t5_dir, output, dirs_exist_ok=True)
    return length
  if t5_dir:
    raise ExportError(
      f"--t5 is for runs trained on cached embeddings; this run's "
      f'text.source is {t["source"]!r} and its own T5 is exported'
    )
  if t['source'] == 't5':
    shutil.copytree(t['t5_dir'], output, dirs_exist_ok=True)
    if t.get('tokenizer'):
      shutil.copyfile(t['tokenizer'], os.path.join(output, t5_checkpoints.VOCAB_FILE))
    return None
  if t['source'] != 't5_random':
    raise ExportError(f"text.source={t['source']!r}: use 't5_random', 't5' or 'cache'")
  vocab = t.get('tokenizer') or os.path.join(  # the run's spiece.model
    prepare.digits_data_dir(config['data'], workdir), t5_checkpoints.VOCAB_FILE
  )
  if not os.path.isfile(vocab):
    raise ExportError(f"the run's tokenizer {vocab} is missing")
  cfg = stage_lib.text_from_config(t)
  from flax import linen as nn

  params = nn.unbox(t5_lib.init_params(cfg, int(t['init_seed'])))
  t5_checkpoints.save_t5(output, cfg, params, vocab=vocab, source='t5_random')
  return None


_ARCH = ('vocab_size', 'd_model', 'num_layers', 'num_heads', 'd_kv', 'd_ff')


def check_cache_encoder(t5_dir: str, cache_dir: str | None, num: int = 8) -> int | None:
  """Refuses a T5 that did not make the embedding cache; returns the cache's text length.

  Same architecture as the cache's metadata, the same token ids for its captions, and
  the same embeddings up to the cache's bfloat16 rounding, for its first `num` records.
  A cache that is gone cannot be checked: the architecture of `t5_dir` is then trusted.
  """
  import jax.numpy as jnp
  from imagen_video_jax.text import cache as cache_lib
  from imagen_video_jax.text import checkpoints as t5_checkpoints
  from imagen_video_jax.text.encoder import TextEncoder

  try:
    t5_cfg, _ = t5_checkpoints.read_config(t5_dir)
  except t5_checkpoints.CheckpointError as e:
    raise ExportError(f'--t5={t5_dir}: {e}') from None
  if not cache_dir or not os.path.isfile(os.path.join(cache_dir, cache_lib.METADATA)):
    return None
  reader = cache_lib.CacheReader(cache_dir)
  made_by = reader.metadata.get('t5', {})
  differ = [
    f'{k} {made_by[k]} vs {getattr(t5_cfg, k)}'
    for k in _ARCH
    if k in made_by and made_by[k] != getattr(t5_cfg, k)
  ]
  if differ:
    raise ExportError(
      f'{t5_dir} is not the T5 that made the cache {cache_dir} (cache vs --t5: {", ".join(differ)})'
    )
  length = int(reader.metadata['max_length'])
  enc = TextEncoder.load(t5_dir, max_length=length, out_dtype=jnp.float32)
  records = [reader[i] for i in range(min(num, len(reader)))]
  tok = enc.tokenizer([r['caption'] for r in records], length)
  if not np.array_equal(tok.ids, np.stack([r['ids'] for r in records])):
    raise ExportError(
      f'the vocabulary of {t5_dir} is not the one that made the cache '
      f'{cache_dir}: its captions tokenize differently'
    )
  cached = np.stack([r['emb'] for r in records]).astype(np.float32)
  emb = enc.encode_ids(tok.ids, tok.mask)
  rel = float(np.linalg.norm(emb - cached) / max(np.linalg.norm(cached), 1e-12))
  if not rel < 0.02:  # bfloat16 rounding is ~0.3%; another T5 is off by ~100%
    raise ExportError(
      f'{t5_dir} is not the T5 that made the cache {cache_dir}: its '
      f'embeddings of the cached captions differ by {100 * rel:.0f}%'
    )
  return length


def training_vocabulary(config: Mapping[str, Any]) -> list[str] | None:
  """The words of a run's captions when they come from a closed set: every word the
  Moving Digits world's captions use (`prepare.digits_captions`); None otherwise."""
  if config.get('data', {}).get('world') != 'digits':
    return None
  from imagen_video_jax.data import prepare

  return caption_words(prepare.digits_captions())


def training_world(configs: list[Mapping[str, Any]]) -> dict[str, Any] | None:
  """The synthetic world the runs trained on ({"name", "version"}), or None for other
  data; refuses runs trained on different versions of one world."""
  worlds = set()
  for c in configs:
    data = c.get('data', {})
    if data.get('world') != 'digits':
      worlds.add(None)
      continue
    from imagen_video_jax.data import prepare

    worlds.add(('digits', prepare.world_config(data).world_version))
  if len(worlds) > 1:
    names = sorted(f'{w[0]} v{w[1]}' if w else 'other data' for w in worlds)
    raise ExportError(
      f"the runs were trained on different worlds ({', '.join(names)}); a cascade's stages "
      'must share one: train the odd stage on the same world (data.bounce) first'
    )
  (world,) = worlds
  return None if world is None else {'name': world[0], 'version': world[1]}


def _student_stages(
  read: list[tuple[dict, Any, int]], student_runs: list[str], stages: list[Stage]
) -> list[Stage]:
  """The students (`read_training_run` of each of `student_runs`) as stages, each checked
  to stand in for one of `stages`: a distillation run, of a stage's name and output spec,
  reading text with that stage's encoder, and at most one per stage."""
  by_name = {t.name: t for t in stages}
  students = []
  for (config, params, _), w in zip(read, student_runs):
    if not (config.get('distill') or {}).get('phase'):
      raise ExportError(f'--student={w} is not a distillation run (its distill.phase is empty)')
    st = stage_lib.from_config(config, params)
    teacher = by_name.get(st.name)
    if teacher is None or teacher.spec != st.spec:
      raise ExportError(
        f'the student {w} ({st.name}, {st.spec}) matches no stage of the cascade '
        f'{[(t.name, t.spec) for t in stages]}'
      )
    if teacher.text is not None and st.text != teacher.text:
      raise ExportError(
        f'the student {w} reads text from another encoder than the stage {st.name} '
        '(config.text differs)'
      )
    if any(o.name == st.name for o in students):
      raise ExportError(f'two students of the stage {st.name!r}: give one')
    students.append(st)
  return students


def with_student_samplers(
  students: Mapping[str, Stage], samplers: Mapping[str, str] | None
) -> dict[str, Stage]:
  """`students` (by stage name) with the default sampler of some of them replaced:
  `samplers` maps a stage to 'ddim', 'ancestral' or 'stepback' (few-step students often
  sample better with the stochastic 'stepback'; which one is measured per stage)."""
  out = dict(students)
  for name, sampler in (samplers or {}).items():
    if name not in out:
      raise ExportError(
        f'a sampler for the student of {name!r}, but there is no such student '
        f'(students: {sorted(out) or "none"})'
      )
    st = out[name]
    try:  # SamplerConfig validates the name
      chosen = dataclasses.replace(st.sampler, sampler=sampler)
    except ValueError as e:
      raise ExportError(f'the student of {name!r}: {e}') from None
    out[name] = dataclasses.replace(st, sampler=chosen)
  return out


def add_students(
  cascade_dir: str,
  student_runs: list[str],
  output: str,
  *,
  weights: str = 'ema',
  student_dtype: str = 'float32',
  student_samplers: Mapping[str, str] | None = None,
) -> str:
  """A copy of the exported cascade `cascade_dir` in `output`, with the students of
  `student_runs` (distillation workdirs) stored beside the stages they stand in for, and
  the default sampler of the students `student_samplers` names set
  (`with_student_samplers`; the cascade's own students too).

  For a cascade whose training runs are gone (a shipped one): its teachers, text encoder,
  vocabulary and world are copied as they are (checked against their digests first), and
  a student replaces an earlier student of the same stage. A student must be of a stage of
  the cascade (same name and output spec), read text with the same encoder architecture,
  and come from the cascade's world. `output` must not hold a cascade.
  """
  import shutil

  student_runs = list(student_runs or [])
  if not student_runs and not student_samplers:
    raise ExportError(
      'nothing to change: give a distillation workdir to add, or a student sampler to set'
    )
  if os.path.exists(os.path.join(output, CASCADE_FILE)):
    raise ExportError(f'{output} already holds a cascade; choose an empty directory')
  path = os.path.join(cascade_dir, CASCADE_FILE)
  if not os.path.isfile(path):
    raise ExportError(f'{cascade_dir} holds no {CASCADE_FILE}: not an exported cascade')
  meta = _read_json(path)
  _check_cascade_meta(path, meta)
  verify_digests(cascade_dir, meta, _files(cascade_dir, meta, text=True))
  for w in student_runs:  # every run, before any is read
    _check_workdir(w)
  read = [read_training_run(w, weights=weights) for w in student_runs]
  stages = [load_stage(os.path.join(cascade_dir, n)) for n in meta['stages']]
  students = {
    n: load_stage(os.path.join(cascade_dir, d)) for n, d in (meta.get('students') or {}).items()
  }
  for (config, _, _), w, st in zip(read, student_runs, _student_stages(read, student_runs, stages)):
    world = training_world([config])
    if meta.get('world') is not None and world is not None and world != meta['world']:
      raise ExportError(
        f'the student {w} was trained on {world}, the cascade {cascade_dir} on '
        f"{meta['world']}: distil on the cascade's own world (data.bounce)"
      )
    students[st.name] = st
  students = with_student_samplers(students, student_samplers)
  text = meta.get('text')
  if text:
    src = inside(cascade_dir, text['dir'], f'{path}: the text dir')
    shutil.copytree(src, os.path.join(output, text['dir']), dirs_exist_ok=True)
  return save_cascade(
    output,
    stages,
    text_dir=text['dir'] if text else None,
    max_length=int(text['max_length']) if text else 32,
    vocabulary=(text or {}).get('vocabulary'),
    world=meta.get('world'),
    students=[students[n] for n in meta['stages'] if n in students],
    student_dtype=student_dtype,
  )


def export_training_runs(
  workdirs: list[str],
  output: str,
  *,
  t5_dir: str | None = None,
  vocabulary: list[str] | None = None,
  weights: str = 'ema',
  student_runs: list[str] | None = None,
  student_dtype: str = 'float32',
  student_samplers: Mapping[str, str] | None = None,
) -> str:
  """Exports trained stages (base first, then SR stages) as one sampling cascade.

  weights: 'ema' (the default) or 'trained' (`read_training_run`).
  student_runs: distillation workdirs (`python -m imagen_video_jax.distill`), each a
  student of one of the stages, stored beside it (`save_cascade`'s `students`) in
  `student_dtype`; `student_samplers`: their default samplers (`with_student_samplers`).

  t5_dir: for runs trained on cached embeddings (`text.source='cache'`), the converted
  T5 that made the cache (checked against it), shipped as the cascade's text encoder.
  vocabulary: the words of the training captions, recorded for prompt checks (default:
  the Moving Digits world's words for digits runs; none for other data).
  """
  if os.path.exists(os.path.join(output, CASCADE_FILE)):
    raise ExportError(f'{output} already holds a cascade; choose an empty directory')
  for w in list(workdirs) + list(student_runs or []):  # every run, before any is read
    _check_workdir(w)
  runs = [read_training_run(w, weights=weights) for w in workdirs]
  student_cfgs = [read_training_run(w, weights=weights) for w in student_runs or []]
  texts = {json.dumps(c['text'], sort_keys=True) for c, _, _ in runs}
  if len(texts) > 1:
    raise ExportError(
      'the runs were trained with different text encoders (config.text); a cascade shares one'
    )
  world = training_world([c for c, _, _ in runs + student_cfgs])
  stages = [stage_lib.from_config(c, ema) for c, ema, _ in runs]
  students = _student_stages(student_cfgs, student_runs or [], stages)
  chosen = with_student_samplers({st.name: st for st in students}, student_samplers)
  students = [chosen[st.name] for st in students]
  config0 = runs[0][0]
  text_dir, length = None, None
  if any(s.unet.text_dim is not None for s in stages):
    text_dir = 'text'
    length = _export_text(config0, workdirs[0], os.path.join(output, text_dir), t5_dir)
  save_cascade(
    output,
    stages,
    text_dir=text_dir,
    max_length=length or int(config0['text'].get('max_length', 32)),
    vocabulary=vocabulary if vocabulary is not None else training_vocabulary(config0),
    world=world,
    students=students,
    student_dtype=student_dtype,
  )
  return output
