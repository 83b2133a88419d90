r"""Sample videos from a prompt with an exported cascade.

    python -m imagen_video_jax.sample --config=configs/digits.py \
        --prompt="a red 3 moving left" --output=outputs/demo.mp4 [--seed=0] \
        [--num_samples=1] [--steps=N] [--guidance=W] [--sampler=ddim|ancestral|stepback] [--scale=4]
        [--init_image=FILE | --init_video=FILE --mode=extend|interpolate] [--fps=F]
        [--length=N [--extend=reconstruction|replacement] [--overlap=4]]

--config=FILE samples the cascade that config file ships (its CASCADE or CASCADE_DIR);
--checkpoints=DIR a cascade of your own (`export_cascade` writes one). Writes OUTPUT (.mp4), and beside it the same stem as .gif and .png (contact sheet);
with --num_samples > 1, stem_0.mp4, stem_1.mp4, ...

--init_image animates an image (it becomes the first frame); --init_video with
--mode=extend continues its frames, with --mode=interpolate fills in between them (every
other frame, or the first and last). Both need a cascade trained with frame conditioning
(`model.frame_cond`); --fps one trained with fps conditioning (`model.fps_embed`).
--length makes a video longer than the cascade's, window by window (any cascade).

A prompt with words the cascade was never trained on (the words its cascade.json
records, e.g. the Moving Digits grammar; for an open vocabulary, a prompt whose words
the tokenizer mostly does not know) is sampled with a warning naming them; --strict
refuses it instead (exit 1, nothing written). Only this command's own lines are
printed; --verbosity=0 (absl) shows the libraries' INFO logs too.
"""

import os
import sys

from absl import app, flags

from imagen_video_jax.cli import _checks as checks

MAX_SCALE = 64

_CONFIG = flags.DEFINE_string(
  'config',
  None,
  'A cascade config file that ships weights, e.g. '
  'configs/digits.py (the Moving Digits cascade in checkpoints/digits).',
)
_CHECKPOINTS = flags.DEFINE_string(
  'checkpoints',
  None,
  'An exported cascade directory (cascade.json); default: the shipped Moving Digits '
  "cascade, checkpoints/digits (wherever imagen_video_jax.pretrained_dir('digits') finds it).",
)
_PROMPT = flags.DEFINE_multi_string('prompt', None, 'Prompt(s); repeat the flag for several.')
_NEGATIVE_PROMPT = flags.DEFINE_string('negative_prompt', None, 'Guide away from this text.')
_OUTPUT = flags.DEFINE_string('output', 'outputs/sample.mp4', 'Output .mp4 path (also .gif, .png).')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 1, 'Videos per prompt.')
_STEPS = flags.DEFINE_integer('steps', None, 'Sampling steps for every stage (default: per stage).')
_GUIDANCE = flags.DEFINE_float('guidance', None, 'Guidance weight for every stage (1 = none).')
_SAMPLER = flags.DEFINE_enum(
  'sampler', None, ['ddim', 'ancestral', 'stepback'], 'Sampler for every stage.'
)
_SCALE = flags.DEFINE_integer(
  'scale', 4, f'Enlarge the written files by this integer factor (1 to {MAX_SCALE}).'
)
_TEACHER = flags.DEFINE_bool(
  'teacher',
  False,
  "Sample each stage's full (teacher) model even where the cascade holds a distilled "
  'few-step student of it (students are sampled by default).',
)
_INIT_IMAGE = flags.DEFINE_string(
  'init_image', None, 'Animate this image (png, jpg, ...): it is the first frame.'
)
_INIT_VIDEO = flags.DEFINE_string(
  'init_video', None, 'Frames to extend or interpolate (mp4, gif, ...); see --mode.'
)
_MODE = flags.DEFINE_enum(
  'mode',
  None,
  ['animate', 'extend', 'interpolate'],
  'Where the given frames go: animate (--init_image, the default for it), extend (the '
  'first frames), interpolate (every other frame, or the first and last). In the base '
  "stage's frames.",
)
_FPS = flags.DEFINE_float(
  'fps',
  None,
  'Frame rate of the videos, for a cascade trained with fps conditioning '
  "(model.fps_embed): the motion per frame follows it. Default: the cascade's own.",
)
_LENGTH = flags.DEFINE_integer(
  'length',
  None,
  'Frames of a video longer than the cascade makes (a multiple of its frames per base '
  'frame, up to 16 times its length): sampled window by window, see --extend.',
)
_EXTEND = flags.DEFINE_enum(
  'extend',
  'reconstruction',
  ['reconstruction', 'replacement'],
  'With --length: how each new window of the base is held to the frames it shares with '
  "the video so far: VDM's reconstruction guidance, or replacement.",
)
_EXTEND_WEIGHT = flags.DEFINE_float(
  'extend_weight', 2.0, 'With --length and --extend=reconstruction: the guidance weight w_r.'
)
_OVERLAP = flags.DEFINE_integer(
  'overlap', 4, 'With --length: base frames each window shares with the one before.'
)
_PROGRESS = flags.DEFINE_bool('progress', True, 'Progress bars.')
_STRICT = flags.DEFINE_bool(
  'strict',
  False,
  'Refuse prompts with words the cascade was never trained on (exit 1, nothing '
  'written) instead of warning.',
)


def cascade_dir_from_config(path: str) -> str:
  """The directory of the cascade a config file ships: its module-level CASCADE (a name
  `imagen_video_jax.pretrained_dir` finds) or CASCADE_DIR (a directory)."""
  import importlib.util

  if ':' in path and not os.path.exists(path):
    path = path.split(':', 1)[0]  # configs/digits.py:stage=base names the same file
  if not os.path.isfile(path):
    raise ValueError(f'--config={path}: no such file')
  spec = importlib.util.spec_from_file_location('_ivj_sample_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  name = getattr(module, 'CASCADE', None)
  if name:
    from imagen_video_jax import shipped

    return shipped.pretrained_dir(name)
  cascade = getattr(module, 'CASCADE_DIR', None)
  if not cascade:
    raise ValueError(
      f'{path} ships no trained cascade (it sets no CASCADE_DIR): train and '
      'export one, then pass --checkpoints=DIR'
    )
  return cascade


def output_paths(output: str, num_videos: int) -> list[str]:
  """Every file `CascadeOutput.save` writes for OUTPUT (.mp4) and this many videos."""
  from imagen_video_jax.cascade import output_stems

  stems = output_stems(output[: -len('.mp4')], num_videos)
  return [f'{s}.{ext}' for s in stems for ext in ('mp4', 'gif', 'png')]


def check_flags() -> dict:
  """Refuses bad flags before anything is loaded; returns the sampler overrides."""
  from imagen_video_jax.diffusion.samplers import SamplerConfig

  if not _PROMPT.value:
    raise checks.Refusal('give a --prompt, e.g. --prompt="a red 3 moving left"')
  if not _OUTPUT.value.endswith('.mp4'):
    raise checks.Refusal(f'--output must end in .mp4; got {_OUTPUT.value}')
  if _NUM_SAMPLES.value < 1:
    raise checks.Refusal(f'--num_samples must be >= 1; got {_NUM_SAMPLES.value}')
  if not 1 <= _SCALE.value <= MAX_SCALE:
    raise checks.Refusal(f'--scale must be in [1, {MAX_SCALE}]; got {_SCALE.value}')
  overrides = {}
  for name, value in (
    ('steps', _STEPS.value),
    ('guidance', _GUIDANCE.value),
    ('sampler', _SAMPLER.value),
  ):
    if value is not None:
      try:
        SamplerConfig(**{name: value})  # the sampler's own validation, up front
      except ValueError as e:
        raise checks.Refusal(f'--{name}={value}: {e}') from None
      overrides[name] = value
  if _LENGTH.value is not None and _LENGTH.value < 1:
    raise checks.Refusal(f'--length must be >= 1; got {_LENGTH.value}')
  if _LENGTH.value is not None and (_INIT_IMAGE.value or _INIT_VIDEO.value):
    raise checks.Refusal(
      '--length and given frames (--init_image, --init_video) cannot be combined yet'
    )
  if _FPS.value is not None and not _FPS.value > 0:
    raise checks.Refusal(f'--fps must be > 0; got {_FPS.value}')
  if _INIT_IMAGE.value and _INIT_VIDEO.value:
    raise checks.Refusal('give --init_image or --init_video, not both')
  if _INIT_IMAGE.value and _MODE.value not in (None, 'animate'):
    raise checks.Refusal(
      f'--mode={_MODE.value} takes --init_video (frames); --init_image is animated'
    )
  if _INIT_VIDEO.value and _MODE.value not in ('extend', 'interpolate'):
    raise checks.Refusal('--init_video needs --mode=extend or --mode=interpolate')
  if _MODE.value and not (_INIT_IMAGE.value or _INIT_VIDEO.value):
    raise checks.Refusal(f'--mode={_MODE.value} needs --init_image or --init_video')
  checks.check_writable_parent('output', _OUTPUT.value)
  paths = output_paths(_OUTPUT.value, len(_PROMPT.value) * _NUM_SAMPLES.value)
  for p in paths:
    if os.path.exists(p) and not os.path.isfile(p):
      raise checks.Refusal(f'--output={_OUTPUT.value}: {p} exists and is not a file')
  existing = [p for p in paths if os.path.isfile(p)]
  if existing:  # replaced, as always, but said so before sampling starts
    print(
      f'note: replacing {len(existing)} existing file(s): {", ".join(existing)}', file=sys.stderr
    )
  return overrides


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  checks.quiet_logs()
  overrides = check_flags()
  import dataclasses
  import time
  import warnings
  from imagen_video_jax import export
  from imagen_video_jax.cascade import NonFiniteSampleError, UnknownPromptWarning

  if _CONFIG.value and _CHECKPOINTS.value:
    raise app.UsageError('give --config (a shipped cascade) or --checkpoints, not both')
  try:
    if _CONFIG.value:
      path = cascade_dir_from_config(_CONFIG.value)
    elif _CHECKPOINTS.value:
      path = _CHECKPOINTS.value
    else:
      from imagen_video_jax import shipped

      path = shipped.pretrained_dir('digits')  # NotFoundError: says where to put a copy
    if not os.path.exists(path):
      raise ValueError(f'{path} does not exist')
    pipe = export.load_cascade(path, students=not _TEACHER.value)
  except (export.ExportError, FileNotFoundError, ValueError) as e:
    raise checks.Refusal(str(e)) from None
  try:
    per_stage = {s.name: dataclasses.replace(s.sampler, **overrides) for s in pipe.stages}
  except ValueError as e:
    raise checks.Refusal(str(e)) from None
  negative = [_NEGATIVE_PROMPT.value] if _NEGATIVE_PROMPT.value else []
  students = [s.name for s in pipe.stages if s.unet.guidance_embed]
  if negative and students:
    raise checks.Refusal(
      f'--negative_prompt: the distilled students ({", ".join(students)}) fold guidance into '
      'one forward and take no negative prompt; add --teacher to sample the full stages'
    )
  given = None
  if _INIT_IMAGE.value or _INIT_VIDEO.value:
    from imagen_video_jax import io

    flag, path = (
      ('init_image', _INIT_IMAGE.value) if _INIT_IMAGE.value else ('init_video', _INIT_VIDEO.value)
    )
    try:
      given = io.read_frames(path)
      if flag == 'init_image' and len(given) != 1:
        raise ValueError(f'{path} holds {len(given)} frames: pass a video as --init_video')
      pipe.given_frames(given, _MODE.value, 1)  # where they go and whether a stage reads them
    except (FileNotFoundError, ValueError) as e:
      hint = ''
      if 'no stage of this cascade reads given frames' in str(e) and students:
        hint = ' (the distilled students may lack what the stages have: try --teacher)'
      raise checks.Refusal(f'--{flag}={path}: {e}{hint}') from None
  if _FPS.value is not None:
    try:
      pipe.stage_rates(_FPS.value)
    except ValueError as e:
      hint = ' (the distilled students may lack what the stages have: try --teacher)'
      raise checks.Refusal(f'--fps={_FPS.value:g}: {e}{hint if students else ""}') from None
  length = extend = None
  if _LENGTH.value is not None:
    from imagen_video_jax import cascade as cascade_lib
    from imagen_video_jax.diffusion.extend import ExtendConfig

    scale = pipe.frames_per_base_frame()
    made = pipe.stages[0].spec.frames * scale
    try:
      if not made <= _LENGTH.value <= cascade_lib.MAX_LENGTH_FACTOR * made:
        # In the user's unit (the videos' frames), not the base stage's.
        raise ValueError(
          f'give {made} to {cascade_lib.MAX_LENGTH_FACTOR * made} frames (the cascade '
          f'makes {made} at a time)'
        )
      if _LENGTH.value % scale:
        raise ValueError(f'give a multiple of {scale} (the frames each base frame becomes)')
      length = _LENGTH.value // scale
      extend = ExtendConfig(_EXTEND.value, _EXTEND_WEIGHT.value, _OVERLAP.value)
      pipe.windows(length, extend.overlap)
    except ValueError as e:
      raise checks.Refusal(f'--length={_LENGTH.value} --overlap={_OVERLAP.value}: {e}') from None
  problem = pipe.check_prompts(_PROMPT.value + negative)
  if problem and _STRICT.value:
    raise checks.Refusal(f'{problem}. Nothing was written (--strict).')
  if problem:
    print(f'warning: {problem}', file=sys.stderr)
  start = time.time()
  try:
    with warnings.catch_warnings():  # reported above, in one line
      warnings.simplefilter('ignore', UnknownPromptWarning)
      out = pipe(
        _PROMPT.value,
        negative_prompt=_NEGATIVE_PROMPT.value,
        num_samples=_NUM_SAMPLES.value,
        seed=_SEED.value,
        samplers_by_stage=per_stage,
        progress=_PROGRESS.value,
        given=given,
        mode=_MODE.value,
        fps=_FPS.value,
        length=length,
        extend=extend,
      )
  except NonFiniteSampleError as e:
    raise checks.Refusal(f'{e}; nothing was written') from None
  paths = out.save(_OUTPUT.value[: -len('.mp4')], scale=_SCALE.value)
  t, h, w, _ = out.videos.shape[1:]
  print(
    f'{len(paths)} video(s) of {t} frames, {w}x{h} at {out.fps:g} fps '
    f'in {time.time() - start:.1f}s:'
  )
  for p, prompt in zip(paths, out.prompts):
    print(f'  {p["mp4"]}  ({prompt!r}; also {p["gif"]}, {p["png"]})')


if __name__ == '__main__':
  app.run(main)
