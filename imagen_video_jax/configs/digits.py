r"""The embedded Moving Digits cascade: base 8x16x16 -> TSR x2 16x16x16 -> SSR x2 16x32x32.

  python -m imagen_video_jax.train --config=configs/digits.py:stage=base --workdir=runs/digits/base
  python -m imagen_video_jax.train --config=configs/digits.py:stage=tsr --workdir=runs/digits/tsr
  python -m imagen_video_jax.train --config=configs/digits.py:stage=ssr --workdir=runs/digits/ssr

  # a tiny variant of any stage, trains in seconds (the tests use it)
  python -m imagen_video_jax.train --config=configs/digits.py:stage=base,tiny=True \
      --workdir=/tmp/digits_tiny --config.num_steps=20

`get_config('stage=base|tsr|ssr[,tiny=True]')`. The job writes the Moving Digits world
(ArrayRecord shards) and its SentencePiece vocabulary on first run into `data.dir`
(default: `<workdir>/data/digits-...`; the three stages of one cascade share one world with
`train --data_root=DIR` or the same `--config.data.dir`).
Text goes through a tiny T5 v1.1 encoder with random frozen weights (numpy-seeded, so
identical everywhere); the U-Nets learn to read it through cross-attention.
Re-running the same command resumes from the last checkpoint in --workdir.
"""

import ml_collections

from imagen_video_jax.configs import common as _common
from imagen_video_jax.data.pipeline import DIGITS_STAGES


STAGES = ('base', 'tsr', 'ssr')
# The trained cascade this file ships, by name: `python -m imagen_video_jax.sample
# --config=configs/digits.py` samples it from wherever imagen_video_jax.pretrained_dir finds it.
CASCADE = 'digits'


def __getattr__(name):
  if name == 'CASCADE_DIR':  # its directory, looked up when asked for (NotFoundError if none)
    from imagen_video_jax import shipped

    return shipped.pretrained_dir(CASCADE)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


_level = _common.level


# Small and efficient: base 3.25M, TSR 2.29M, SSR 2.48M params: 32 MB in float32 (EMA).
_MODELS = {
  'base': (
    _level(32),
    _level(64, 2, True, 'attention', True),
    _level(128, 2, True, 'attention', True),
  ),
  'tsr': (_level(32), _level(64, 2, cross=True), _level(96, 2, True, 'conv', True)),
  'ssr': (_level(32), _level(48), _level(64, 2, cross=True), _level(96, 2, True, 'conv', True)),
}
_TINY_MODELS = {
  'base': (_level(16), _level(32, 1, False, 'attention', True)),
  'tsr': (_level(16), _level(32, 1, cross=True)),
  'ssr': (_level(16), _level(32, 1, cross=True)),
}


def get_config(arg: str = 'stage=base') -> ml_collections.ConfigDict:
  a = _common.parse_arg(arg, 'configs/digits.py', stage=STAGES, tiny=False)
  stage, tiny = a['stage'], a['tiny']
  spec = DIGITS_STAGES[stage]
  is_sr = stage != 'base'

  c = ml_collections.ConfigDict()
  c.name = f'digits_{stage}' + ('_tiny' if tiny else '')
  c.stage = stage
  _common.run(
    c,
    num_steps=200 if tiny else 100_000,
    log_every=10 if tiny else 100,
    checkpoint_every_steps=100 if tiny else 2000,
    checkpoint_every_secs=0.0 if tiny else 600.0,
    sample_every=0 if tiny else 5000,
  )
  c.spec = _common.spec(spec)

  c.text = ml_collections.ConfigDict(
    dict(
      source='t5_random',  # tiny T5, random frozen weights (see module doc)
      vocab_size=128,
      d_model=32 if tiny else 64,
      num_layers=1 if tiny else 2,
      num_heads=2 if tiny else 4,
      d_kv=16,
      d_ff=64 if tiny else 128,
      init_seed=0,
      max_length=10,
      tokenizer='',  # '': <data.dir>/spiece.model
    )
  )

  c.model = ml_collections.ConfigDict(
    dict(
      levels=(_TINY_MODELS if tiny else _MODELS)[stage],
      in_channels=3,
      cond_channels=3 if is_sr else 0,
      cond_augment=is_sr,
      text_dim=c.text.d_model,
      text_pool=True,
      emb_dim=32 if tiny else 128,
      head_dim=16 if tiny else 32,
      temporal_buckets=16,
      temporal_max_distance=32,
      dropout=0.0,
      dtype='float32',
      remat='none',  # small models: neither remat nor scanned blocks pays
      scan_blocks=False,
      # The attention kernel: 'auto' picks by backend (models/attention_kernels.py).
      attention='auto',
      # The network also reads the guidance weight: a guided-distillation student.
      guidance_embed=False,
      # The network also reads given frames (`frame_cond` section): image-to-video,
      # extension and interpolation by one model.
      frame_cond=False,
      # The network also reads each row's frame rate (set data.frame_strides): fps
      # conditioning.
      fps_embed=False,
    )
  )

  c.diffusion = _common.diffusion()
  # Small models take a high rate and a short warm-up: CPU runs are a few 1000 steps.
  c.optim = _common.optim(
    lr=1e-3 if tiny else 5e-4, warmup_steps=10 if tiny else 200, ema_decay=0.999
  )

  c.data = ml_collections.ConfigDict(
    dict(
      world='digits',
      # False: world v2 (one direction all clip long, as a person reads the caption);
      # True: world v1, the bouncing world of runs and cascades made before v2.
      bounce=False,
      dir='',
      batch_size=2 if tiny else 32,
      image_fraction=0.5 if tiny else 0.25,
      num_videos=16 if tiny else 20_000,
      num_images=16 if tiny else 20_000,
      seed=0,
      clip_frames=16,
      clip_size=32,
      fps=8,
      num_threads=1 if tiny else 4,
      prefetch_rows=8 if tiny else 64,
      worker_count=0,
      # Skip (count and log) records that cannot be read instead of stopping.
      skip_bad_records=False,
      # Frame-rate augmentation: each video row takes every s-th frame, s drawn from
      # these comma-separated strides (e.g. '1,2'), and carries its fps ('': the stage's
      # own stride). model.fps_embed needs it.
      frame_strides='',
      # A random training crop of every clip (0 = the stage's full size on that axis):
      # frames, height, width of the window cut from the video, its SR conditioning
      # (made at full size first) and its frame ids and captions. For SSR the spatial
      # and for TSR the temporal crop (and offset) are multiples of the stage's factor.
      # A spatial crop trains the same function as full size only for a model fully
      # convolutional in space (no spatial attention; GroupNorm's per-frame statistics
      # still see only the crop). Training-time sample videos are crop-sized; the
      # exported stage samples at full size. See docs/training.md, 'Training on crops'.
      crop=ml_collections.ConfigDict(dict(frames=0, height=0, width=0)),
    )
  )

  c.sample = ml_collections.ConfigDict(
    dict(
      # The exported stage's default sampler: 'ddim', 'ancestral' or 'stepback'.
      sampler='ddim',
      steps=8 if tiny else 32,
      guidance=3.0,
      num=4,
      clip='static',
    )
  )
  c.distill = _common.distill()
  c.frame_cond = _common.frame_cond()
  c.mesh = ml_collections.ConfigDict(
    dict(
      data=-1,
      fsdp=1,
      time=1,  # devices that split each clip's frames (activation sharding)
      space=1,  # devices that split each clip's rows (activation sharding)
      tensor=1,
      constrain_activations=False,
    )
  )
  return c
