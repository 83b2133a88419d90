r"""Sample videos from a prompt with an exported cascade.

    python -m imagen_video_jax.sample --prompt="a red 3 moving left" \
        --output=outputs/demo.mp4 [--checkpoints=checkpoints/digits] [--seed=0] \
        [--num_samples=1] [--steps=N] [--guidance=W] [--sampler=ddim|ancestral] [--scale=4]

Writes OUTPUT (.mp4), and beside it the same stem as .gif and .png (contact sheet);
with --num_samples > 1, stem_0.mp4, stem_1.mp4, ...
"""
import os

from absl import app, flags

flags.DEFINE_string('checkpoints', None, 'An exported cascade directory (cascade.json); '
                    'default: the shipped Moving Digits cascade, checkpoints/digits.')
flags.DEFINE_multi_string('prompt', None, 'Prompt(s); repeat the flag for several.')
flags.DEFINE_string('negative_prompt', None, 'Guide away from this text.')
flags.DEFINE_string('output', 'outputs/sample.mp4', 'Output .mp4 path (also .gif, .png).')
flags.DEFINE_integer('seed', 0, 'Random seed.')
flags.DEFINE_integer('num_samples', 1, 'Videos per prompt.')
flags.DEFINE_integer('steps', None, 'Sampling steps for every stage (default: per stage).')
flags.DEFINE_float('guidance', None, 'Guidance weight for every stage (1 = none).')
flags.DEFINE_enum('sampler', None, ['ddim', 'ancestral'], 'Sampler for every stage.')
flags.DEFINE_integer('scale', 4, 'Enlarge the written files by this integer factor.')
flags.DEFINE_bool('progress', True, 'Progress bars.')
FLAGS = flags.FLAGS

DEFAULT_CHECKPOINTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                   'checkpoints', 'digits')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not FLAGS.prompt:
    raise app.UsageError('give a --prompt, e.g. --prompt="a red 3 moving left"')
  if not FLAGS.output.endswith('.mp4'):
    raise app.UsageError(f'--output must end in .mp4; got {FLAGS.output}')
  import dataclasses
  import time
  from imagen_video_jax import export
  path = FLAGS.checkpoints or DEFAULT_CHECKPOINTS
  try:
    pipe = export.load_cascade(path)
  except (export.ExportError, FileNotFoundError) as e:
    raise app.UsageError(str(e)) from None
  overrides = {k: v for k, v in (('steps', FLAGS.steps), ('guidance', FLAGS.guidance),
                                 ('sampler', FLAGS.sampler)) if v is not None}
  per_stage = {s.name: dataclasses.replace(s.sampler, **overrides) for s in pipe.stages}
  start = time.time()
  out = pipe(FLAGS.prompt, negative_prompt=FLAGS.negative_prompt,
             num_samples=FLAGS.num_samples, seed=FLAGS.seed, samplers_by_stage=per_stage,
             progress=FLAGS.progress)
  paths = out.save(FLAGS.output[:-len('.mp4')], scale=FLAGS.scale)
  t, h, w, _ = out.videos.shape[1:]
  print(f'{len(paths)} video(s) of {t} frames, {w}x{h} at {out.fps:g} fps '
        f'in {time.time() - start:.1f}s:')
  for p, prompt in zip(paths, out.prompts):
    print(f'  {p["mp4"]}  ({prompt!r}; also {p["gif"]}, {p["png"]})')


if __name__ == '__main__':
  app.run(main)
