r"""The seven stages of the paper's Imagen Video cascade (Ho et al. 2022; see
docs/design.md, 'The cascades').

  # import your videos (ArrayRecord), cache their T5-XXL embeddings, then train a stage
  python -m imagen_video_jax.import_videos --manifest=videos.csv --output=data/videos
  python -m imagen_video_jax.encode_text --t5=checkpoints/t5_xxl \
      --captions=captions.txt --output=data/text_cache   # the manifest's captions, one a line
  python -m imagen_video_jax.train --config=configs/imagen_video.py:stage=base \
      --workdir=gs://BUCKET/imagen_video/base --config.data.dir=data/videos \
      --config.text.cache_dir=data/text_cache

  # what a stage is, without allocating it (parameter count of every stage, ~20 s)
  python -c "import imagen_video_jax.configs.imagen_video as c; c.print_summary()"

`get_config('stage=NAME')`, NAME one of base, tsr1, ssr1, ssr2, tsr2, tsr3, ssr3:

  stage  frames x H x W  fps  temporal   spatial attn     cross-attn    params (paper)
  base   16 x  24 x  40    3  attention  every level      every level   5.76B (5.6B)
  tsr1   32 x  24 x  40    6  conv       none             12x20, 6x10   1.74B (1.7B)
  ssr1   32 x  48 x  80    6  conv       12x20, 6x10      12x20, 6x10   1.41B (1.4B)
  ssr2   32 x 192 x 320    6  conv       24x40, 12x20     12x20         1.20B (1.2B)
  tsr2   64 x 192 x 320   12  conv       none             12x20         804M  (780M)
  tsr3  128 x 192 x 320   24  conv       none             12x20         658M  (630M)
  ssr3  128 x 768 x 1280  24  conv       none (fully convolutional)     344M  (340M)

The paper gives sizes, frame rates and parameter counts, not the architectures; these
are Imagen-style Efficient U-Nets chosen to match them (tests/test_paper_configs.py
holds every count to 10%): the base model is Imagen's 64x64 layout (channel multipliers
1,2,3,4 of 768) with temporal attention; the super-resolution stages use 128-channel
Efficient U-Nets (multipliers up to 8) with more residual blocks at low resolution, and
attention only where the sequence is short. Every stage reads T5-XXL embeddings
(4096-d) through attention pooling into the conditioning vector, and through
cross-attention where listed. Source clips are taken as 24 fps (frame_stride = 24/fps).
"""

import ml_collections

from imagen_video_jax.configs import common as _common
from imagen_video_jax.data.pipeline import StageSpec


STAGES = ('base', 'tsr1', 'ssr1', 'ssr2', 'tsr2', 'tsr3', 'ssr3')

# Parameter counts reported by the paper (Imagen Video, Table/§2.5): 11.6B in all.
PAPER_PARAMS = {
  'base': 5.6e9,
  'tsr1': 1.7e9,
  'ssr1': 1.4e9,
  'ssr2': 1.2e9,
  'tsr2': 780e6,
  'tsr3': 630e6,
  'ssr3': 340e6,
}

SOURCE_FPS = 24
T5_XXL = dict(vocab_size=32128, d_model=4096, num_layers=24, num_heads=64, d_kv=64, d_ff=10240)


def _unet(base, mults, blocks, *, spatial=(), cross=(), temporal='conv'):
  """Levels of an Efficient U-Net; `spatial`/`cross` list the level indices with attention."""
  return tuple(
    _common.level(base * m, b, i in spatial, temporal, i in cross)
    for i, (m, b) in enumerate(zip(mults, blocks))
  )


# How each stage trains on a pod (benchmarks/BENCHMARKS.md, 'Memory plan'): data-parallel
# groups, and how many devices split one example's frames (time) and rows (space); fsdp
# takes the rest of the devices. ssr3 trains on crops of 128 x 192 x 320 (it is fully
# convolutional: no attention) and samples at full size.
_PARALLEL = {  # stage: (data, time, space, crop frames x height x width or None)
  'base': (1, 1, 1, None),
  'tsr1': (2, 1, 1, None),
  'ssr1': (1, 1, 1, None),
  'ssr2': (8, 2, 1, None),
  'tsr2': (8, 4, 1, None),
  'tsr3': (8, 8, 1, None),
  'ssr3': (8, 8, 1, (128, 192, 320)),
}

# stage: (frames, height, width, fps, kind, factor, levels)
# fmt: off
_STAGES = {
  # 24x40 -> 12x20 -> 6x10 -> 3x5; attention (spatial, temporal, text) everywhere.
  'base': (16, 24, 40, 3, 'base', 1,
           _unet(768, (1, 2, 3, 4), (2, 3, 5, 5), spatial=range(4), cross=range(4),
                 temporal='attention')),
  # Frame interpolation at 24x40: convolutions only, text cross-attention at low res.
  'tsr1': (32, 24, 40, 6, 'tsr', 2,
           _unet(384, (1, 2, 4, 4), (2, 4, 5, 5), cross=(2, 3))),
  # 48x80 -> ... -> 6x10; self- and cross-attention at 12x20 and 6x10.
  'ssr1': (32, 48, 80, 6, 'ssr', 2,
           _unet(256, (1, 2, 4, 6), (2, 4, 5, 5), spatial=(2, 3), cross=(2, 3))),
  # 192x320 -> ... -> 12x20 (Imagen's 256px Efficient U-Net, with temporal conv).
  'ssr2': (32, 192, 320, 6, 'ssr', 4,
           _unet(128, (1, 2, 4, 8, 8), (2, 4, 7, 7, 7), spatial=(3, 4), cross=(4,))),
  'tsr2': (64, 192, 320, 12, 'tsr', 2,
           _unet(128, (1, 2, 4, 8, 8), (2, 4, 4, 5, 5), cross=(4,))),
  'tsr3': (128, 192, 320, 24, 'tsr', 2,
           _unet(128, (1, 2, 4, 6, 8), (2, 3, 4, 4, 5), cross=(4,))),
  # 768x1280 -> ... -> 24x40, fully convolutional (runs on any size, e.g. crops).
  'ssr3': (128, 768, 1280, 24, 'ssr', 4,
           _unet(128, (1, 1, 2, 4, 6, 6), (1, 2, 2, 3, 3, 3))),
}
# fmt: on


def get_config(arg: str = 'stage=base') -> ml_collections.ConfigDict:
  stage = _common.parse_arg(arg, 'configs/imagen_video.py', stage=STAGES)['stage']
  frames, height, width, fps, kind, factor, levels = _STAGES[stage]
  data, time, space, crop = _PARALLEL[stage]
  # StageSpec validates the sizes and factors.
  spec = StageSpec(frames, height, width, SOURCE_FPS // fps, kind, factor)
  is_sr = kind != 'base'

  c = ml_collections.ConfigDict()
  c.name = f'imagen_video_{stage}'
  c.stage = stage
  c.frames, c.height, c.width, c.fps = frames, height, width, fps
  c.paper_params = PAPER_PARAMS[stage]
  _common.run(
    c,
    num_steps=1_000_000,
    checkpoint_every_steps=5000,
    checkpoint_every_secs=1800,
    sample_every=20_000,
    max_nonfinite_in_a_row=20,
  )
  c.spec = _common.spec(spec)

  # Frozen T5-XXL. 'cache': embeddings precomputed by encode_text (what the paper's
  # scale calls for); 't5': run the converted encoder (text.t5_dir) in the train step.
  c.text = ml_collections.ConfigDict(
    dict(
      source='cache',
      size='xxl',
      t5_dir='',
      cache_dir='',
      tokenizer='',
      max_length=128,
      init_seed=0,
      **T5_XXL,
    )
  )

  c.model = ml_collections.ConfigDict(
    dict(
      levels=levels,
      in_channels=3,
      cond_channels=3 if is_sr else 0,
      cond_augment=is_sr,
      text_dim=T5_XXL['d_model'],
      text_pool=True,
      emb_dim=1024,
      head_dim=64,
      temporal_buckets=32,
      temporal_max_distance=64,
      dropout=0.0,
      dtype='bfloat16',
      # Activations, not weights, decide the mesh at this size (benchmarks/BENCHMARKS.md):
      # recompute each block in the backward pass; scanned blocks also compile faster.
      remat='full',
      scan_blocks=True,
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
  c.optim = _common.optim(lr=1e-4, warmup_steps=10_000, ema_decay=0.9999)

  # Real videos (import_videos output) jointly with still images packed as frames.
  c.data = ml_collections.ConfigDict(
    dict(
      world='videos',
      dir='',
      batch_size=256,
      image_fraction=0.25,
      seed=0,
      num_threads=16,
      prefetch_rows=512,
      worker_count=8,
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
      crop=ml_collections.ConfigDict(dict(zip(('frames', 'height', 'width'), crop or (0, 0, 0)))),
    )
  )

  c.sample = ml_collections.ConfigDict(
    dict(
      # The exported stage's default sampler: 'ddim', 'ancestral' or 'stepback'.
      sampler='ddim',
      steps=64,
      guidance=6.0 if stage == 'base' else 3.0,
      num=4,
      clip='dynamic',
    )
  )

  # Per stage: data-parallel groups and the devices that split one clip (the planned
  # meshes of benchmarks/BENCHMARKS.md); FSDP over the devices they leave. E.g.
  # --config.mesh.data=4 for 4 data-parallel groups, and dcn_data=NUM_SLICES for
  # multi-slice TPU (see imagen_video_jax.parallel).
  c.distill = _common.distill()
  c.frame_cond = _common.frame_cond()
  c.mesh = ml_collections.ConfigDict(
    dict(
      data=data,
      fsdp=-1,
      time=time,  # devices that split each clip's frames (activation sharding)
      space=space,  # devices that split each clip's rows (activation sharding)
      tensor=1,
      constrain_activations=True,
    )
  )
  return c


def param_count(stage: str) -> int:
  """Parameters of a stage from abstract shapes only (jax.eval_shape: nothing allocated)."""
  from imagen_video_jax.models.unet import UNetConfig, count_params

  return count_params(UNetConfig.from_dict(get_config(f'stage={stage}').model.to_dict()))


def print_summary() -> None:
  total = 0
  for stage in STAGES:
    c = get_config(f'stage={stage}')
    n = param_count(stage)
    total += n
    print(
      f'{stage:5s} {c.frames:4d} x {c.height:4d} x {c.width:4d} @ {c.fps:2d} fps  '
      f'{n / 1e9:6.3f}B params (paper {PAPER_PARAMS[stage] / 1e9:.2f}B, '
      f'{100 * (n / PAPER_PARAMS[stage] - 1):+.1f}%)'
    )
  print(f'total {total / 1e9:.2f}B (paper 11.6B) + frozen T5-XXL encoder (4.6B)')
