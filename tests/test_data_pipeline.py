"""grain pipeline: stage examples, packing, SR conditioning, text, resume, sharding."""

import json

import numpy as np
import pytest

from imagen_video_jax.data import digits, pipeline as P, records

STAGES = P.DIGITS_STAGES
L = 6


def tokenize(captions):
  """A stand-in tokenizer: one id per word (hash), padded/truncated to L."""
  ids = np.zeros((len(captions), L), np.int32)
  mask = np.zeros((len(captions), L), bool)
  for i, c in enumerate(captions):
    words = [1 + sum(map(ord, w)) % 97 for w in c.split()][:L]
    ids[i, : len(words)], mask[i, : len(words)] = words, True
  return ids, mask


def embed(caption):
  """A stand-in for text.cache.CacheReader.lookup: a dict with bfloat16 embeddings."""
  import ml_dtypes

  ids, mask = tokenize([caption])
  emb = np.repeat(ids[0, :, None], 3, axis=1).astype(ml_dtypes.bfloat16)
  return {'caption': caption, 'ids': ids[0], 'emb': emb, 'mask': mask[0]}


@pytest.fixture(scope='module')
def shards(tmp_path_factory):
  out = tmp_path_factory.mktemp('digits')
  digits.write_shards(
    digits.DigitsConfig(), 0, str(out), num_videos=24, num_images=40, per_shard=10
  )
  return str(out)


def _pipe(shards, stage='base', **kw):
  kw = {'batch_size': 4, 'image_fraction': 0.5, 'shard_index': 0, 'shard_count': 1, **kw}
  return P.make_pipeline(STAGES[stage], P.PipelineConfig(**kw), shards, shards, tokenizer=tokenize)


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return len(a) == len(b) and all(
    x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b)
  )


def test_batch_layout_and_frame_ids(shards):
  batch = next(iter(_pipe(shards, 'base', keep_captions=True)))
  assert batch['video'].shape == (4, 8, 16, 16, 3) and batch['video'].dtype == np.float32
  assert -1.0 <= batch['video'].min() and batch['video'].max() <= 1.0
  assert batch['frame_ids'].shape == (4, 8) and batch['frame_ids'].dtype == np.int32
  assert batch['tokens'].shape == (4, 8, L) and batch['text_mask'].dtype == bool
  assert 'cond' not in batch
  kinds = []
  for ids, caps in zip(batch['frame_ids'], batch['captions']):
    if len(set(ids)) == 1:  # a video row: one id, one caption on every frame
      kinds.append('video')
      assert ids[0] == 0 and len(set(caps)) == 1 and 'moving' in caps[0]
    else:  # a packed image row: distinct ids, one caption per frame
      kinds.append('image')
      assert len(set(ids.tolist())) == len(ids) and all('moving' not in c for c in caps)
  assert sorted(kinds) == ['image', 'image', 'video', 'video']
  # Per-frame text follows the captions.
  ids, mask = tokenize([str(c) for c in batch['captions'].reshape(-1)])
  assert np.array_equal(batch['tokens'].reshape(-1, L), ids)
  assert np.array_equal(batch['text_mask'].reshape(-1, L), mask)


def test_video_row_is_strided_resized_source(shards):
  import jax

  src = records.decode(_first_record(shards))
  row = P.stage_example(records.encode(src), STAGES['base'])
  want = jax.image.resize(
    src.video[::2].astype(np.float32) / 127.5 - 1, (8, 16, 16, 3), 'bilinear', antialias=True
  )
  np.testing.assert_allclose(row['video'], want, atol=1e-5)
  assert row['captions'] == [src.caption] * 8


def _first_record(shards):
  import grain

  return grain.sources.ArrayRecordDataSource(records.shard_paths(shards, 'videos'))[0]


def test_sr_conditioning_is_the_downsampled_target(shards):
  import jax

  ssr = next(iter(_pipe(shards, 'ssr', batch_size=2)))
  target = ssr['video']
  low = jax.image.resize(target, (2, 16, 16, 16, 3), 'bilinear', antialias=True)
  want = jax.image.resize(low, (2, 16, 32, 32, 3), 'bilinear')
  np.testing.assert_allclose(ssr['cond'], want, atol=1e-5)

  tsr = next(iter(_pipe(shards, 'tsr', batch_size=4)))
  for video, cond, ids in zip(tsr['video'], tsr['cond'], tsr['frame_ids']):
    if len(set(ids)) == 1:  # video: each even frame repeated twice
      np.testing.assert_array_equal(cond, np.repeat(video[::2], 2, axis=0))
    else:  # independent images: each its own 1-frame clip
      np.testing.assert_array_equal(cond, video)
  # The base stage's frames are the TSR conditioning's frames (same source clip).
  assert tsr['cond'].shape == (4, 16, 16, 16, 3)


def test_resume_from_saved_state_gives_identical_batches(shards):
  it = iter(_pipe(shards, 'tsr', batch_size=3, seed=5))
  _take(it, 4)  # mid-epoch: 24 videos, 4 x 3 rows half of them videos
  state = json.loads(json.dumps(it.get_state()))  # states survive a JSON round trip
  expected = _take(it, 5)
  resumed = iter(_pipe(shards, 'tsr', batch_size=3, seed=5))
  resumed.set_state(state)
  assert _same(_take(resumed, 5), expected)


def test_orbax_checkpoint_of_the_iterator(shards, tmp_path):
  import grain
  import orbax.checkpoint as ocp

  it = iter(_pipe(shards, 'base', batch_size=2, seed=9))
  _take(it, 3)
  manager = ocp.CheckpointManager(
    tmp_path, item_handlers={'data': grain.checkpoint.CheckpointHandler()}
  )
  manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
  manager.wait_until_finished()
  expected = _take(it, 3)
  resumed = iter(_pipe(shards, 'base', batch_size=2, seed=9))
  manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  assert _same(_take(resumed, 3), expected)


def test_deterministic_given_seed(shards):
  a = _take(iter(_pipe(shards, seed=1)), 3)
  b = _take(iter(_pipe(shards, seed=1)), 3)
  c = _take(iter(_pipe(shards, seed=2)), 3)
  assert _same(a, b)
  assert not _same(a, c)


def test_processes_read_their_slices_of_the_same_global_batches(shards):
  """P processes together read exactly the one-process batches, each row once."""

  def batches(index, count, n=None):
    it = iter(
      _pipe(
        shards,
        batch_size=4,
        shard_index=index,
        shard_count=count,
        image_fraction=0.5,
        num_epochs=1 if n is None else None,
      )
    )
    return list(it) if n is None else _take(it, n)

  whole = batches(0, 1, 6)
  for count in (2, 4):
    parts = [batches(i, count, 6) for i in range(count)]
    for b, expected in enumerate(whole):
      for key in expected:
        got = np.concatenate([p[b][key] for p in parts])  # process order, as jax stacks them
        np.testing.assert_array_equal(got, expected[key], err_msg=f'{count} processes, {key}')
  # One finite epoch: whole global batches only, the processes' rows disjoint.
  epoch = batches(0, 1)
  p0, p1 = batches(0, 2), batches(1, 2)
  assert len(p0) == len(p1) == len(epoch) > 0
  rows = lambda bs: [v.tobytes() for b in bs for v in b['video']]
  assert not set(rows(p0)) & set(rows(p1))
  assert sorted(rows(p0) + rows(p1)) == sorted(rows(epoch))
  with pytest.raises(ValueError, match='divisible'):
    _pipe(shards, batch_size=3, shard_index=0, shard_count=2)


def test_cached_embeddings_and_padding(shards):
  config = P.PipelineConfig(
    batch_size=2, image_fraction=1.0, num_epochs=1, shuffle=False, shard_index=0, shard_count=1
  )
  batches = list(P.make_pipeline(STAGES['base'], config, None, shards, embedder=embed))
  # 40 images, 8 per row -> 5 rows -> 2 full batches (the remainder is dropped).
  assert len(batches) == 2
  b = batches[0]
  assert b['text_emb'].shape == (2, 8, L, 3) and b['text_mask'].shape == (2, 8, L)
  assert b['text_emb'].dtype.name == 'bfloat16'  # the cache's dtype is kept
  assert 'tokens' not in b
  # A short last pack is padded with id -1 frames that carry no text.
  row = P.pack_images([_first_image(shards)] * 3, STAGES['ssr'])
  assert row['frame_ids'].tolist() == [0, 1, 2] + [-1] * 13
  assert np.all(row['video'][3:] == 0) and np.all(row['cond'][3:] == 0)
  attached = P._AttachText(tokenize, None, False).map(row)
  assert not attached['text_mask'][3:].any() and attached['text_mask'][:3].any()


def _first_image(shards):
  import grain

  return grain.sources.ArrayRecordDataSource(records.shard_paths(shards, 'images'))[0]


def test_with_the_project_sentencepiece_tokenizer(shards, tmp_path):
  import functools

  from imagen_video_jax.text import tokenizer

  config = digits.DigitsConfig()
  captions = [e.caption for e in digits.generate(config, 0, 'video', 200)]
  captions += [e.caption for e in digits.generate(config, 0, 'image', 50)]
  model = tokenizer.train_sentencepiece(captions, str(tmp_path / 'sp.model'), vocab_size=64)
  tok = functools.partial(tokenizer.Tokenizer(model), max_length=12, warn=False)
  batch = next(
    iter(
      P.make_pipeline(
        STAGES['base'],
        P.PipelineConfig(
          batch_size=2, image_fraction=0.5, shard_index=0, shard_count=1, keep_captions=True
        ),
        shards,
        shards,
        tokenizer=tok,
      )
    )
  )
  assert batch['tokens'].shape == (2, 8, 12)
  want = tok([str(c) for c in batch['captions'].reshape(-1)])
  assert np.array_equal(batch['tokens'].reshape(-1, 12), want.ids)
  assert np.array_equal(batch['text_mask'].reshape(-1, 12), want.mask)


def test_short_clip_is_padded_not_dropped():
  ex = records.Example(video=np.full((5, 32, 32, 3), 255, np.uint8), caption='x', fps=8)
  row = P.stage_example(records.encode(ex), STAGES['base'])  # needs 15 source frames
  assert row['frame_ids'].tolist() == [0, 0, 0, -1, -1, -1, -1, -1]
  np.testing.assert_allclose(row['video'][:3], 1.0, atol=1e-6)


def test_stage_spec_and_config_validation():
  assert STAGES['tsr'].cond_frames == 8 and STAGES['ssr'].cond_height == 16
  assert STAGES['base'].source_span == 15
  with pytest.raises(ValueError, match='kind'):
    P.StageSpec(8, 16, 16, kind='xsr')
  with pytest.raises(ValueError, match='divide'):
    P.StageSpec(9, 16, 16, kind='tsr', factor=2)
  with pytest.raises(ValueError, match='image_fraction'):
    P.PipelineConfig(batch_size=2, image_fraction=1.5)
  with pytest.raises(ValueError, match='image shards'):
    P.make_pipeline(
      STAGES['base'],
      P.PipelineConfig(batch_size=2, image_fraction=0.5, shard_index=0, shard_count=1),
      'x',
    )


def test_centre_crop_keeps_the_middle():
  x = np.arange(6 * 10).reshape(1, 6, 10, 1)
  assert P.centre_crop(x, 4, 4).shape == (1, 6, 6, 1)
  assert P.centre_crop(x, 4, 4)[0, 0, 0, 0] == 2
  assert P.centre_crop(x, 2, 5).shape == (1, 4, 10, 1)


def test_resume_with_worker_processes(shards):
  it = iter(_pipe(shards, 'base', worker_count=1, seed=3))
  _take(it, 2)
  state = it.get_state()
  expected = _take(it, 3)
  resumed = iter(_pipe(shards, 'base', worker_count=1, seed=3))
  resumed.set_state(state)
  assert _same(_take(resumed, 3), expected)
  # ... and a worker process makes the batches the main process makes.
  assert _same(_take(iter(_pipe(shards, 'base', worker_count=0, seed=3)), 5)[2:], expected)


def _clips(folder, n=8, per_shard=4):
  with records.ShardedWriter(folder, records.VIDEO_PREFIX, per_shard) as w:
    for i in range(n):
      w.write(records.Example(video=np.full((16, 8, 8, 3), 10 * i, np.uint8), caption=f'c {i}'))
  return records.shard_paths(str(folder))


def _video_pipe(folder, **kw):
  cfg = P.PipelineConfig(
    batch_size=1, shard_index=0, shard_count=1, shuffle=False, num_epochs=1, **kw
  )
  return P.make_pipeline(STAGES['base'], cfg, str(folder), tokenizer=tokenize)


def test_bad_records_name_their_shard_or_are_skipped_and_counted(tmp_path, caplog):
  import shutil

  paths = _clips(tmp_path / 'ok')
  # A record that is a valid ArrayRecord entry but not ours, written as shard 1's record 2.
  with records.ShardedWriter(tmp_path / 'bad', records.VIDEO_PREFIX, 4) as w:
    for i in range(8):
      w.write(b'junk' if i == 6 else records.encode(records.decode(_raw(paths, i))))
  with pytest.raises(records.BadRecordError) as e:
    list(_video_pipe(tmp_path / 'bad'))
  assert 'videos-00001.array_record: record 2' in str(e.value) and 'magic' in str(e.value)
  before = records.skipped_records()['records']
  with caplog.at_level('WARNING'):
    rows = list(_video_pipe(tmp_path / 'bad', skip_bad_records=True))
  assert len(rows) == 7  # every good record, once
  assert records.skipped_records()['records'] == before + 1
  assert (
    'skipping a bad record' in caplog.text and 'videos-00001.array_record: record 2' in caplog.text
  )

  # Damaged bytes inside a shard: ArrayRecord's own checksum error, with the file named.
  shutil.copytree(tmp_path / 'ok', tmp_path / 'flipped')
  shard = tmp_path / 'flipped' / 'videos-00001.array_record'
  data = bytearray(shard.read_bytes())
  data[200:600] = bytes(b ^ 0xFF for b in data[200:600])
  shard.write_bytes(bytes(data))
  with pytest.raises(records.BadRecordError, match=r'videos-00001\.array_record: record \d'):
    list(_video_pipe(tmp_path / 'flipped'))

  # A truncated shard cannot even be opened.
  shutil.copytree(tmp_path / 'ok', tmp_path / 'cut')
  shard = tmp_path / 'cut' / 'videos-00000.array_record'
  shard.write_bytes(shard.read_bytes()[:1000])
  with pytest.raises(records.BadRecordError, match=r'videos-00000\.array_record: cannot open'):
    _video_pipe(tmp_path / 'cut')
  shards_before = records.skipped_records()['shards']
  rows = list(_video_pipe(tmp_path / 'cut', skip_bad_records=True))
  assert len(rows) == 4 and records.skipped_records()['shards'] == shards_before + 1


def _raw(paths, i):
  import grain

  return grain.sources.ArrayRecordDataSource(paths)[i]


def test_skip_bad_records_config_reaches_the_pipeline(tmp_path):
  import os
  import sys

  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  from configs import digits as digits_config, imagen_video as paper_config
  from imagen_video_jax.training import loop

  assert paper_config.get_config('stage=base').data.skip_bad_records is False
  config = digits_config.get_config('stage=base,tiny=True')
  assert config.data.skip_bad_records is False
  paths = _clips(tmp_path / 'ok', n=3, per_shard=3)
  with records.ShardedWriter(tmp_path / 'bad', records.VIDEO_PREFIX, 4) as w:
    for i in range(3):
      w.write(_raw(paths, i) if i != 1 else b'junk')
  config.data.image_fraction, config.data.batch_size = 0.0, 1
  with pytest.raises(records.BadRecordError, match='videos-00000.array_record: record 1'):
    _take(iter(loop.make_data(config, STAGES['base'], str(tmp_path / 'bad'), tokenize, None)), 3)
  config.data.skip_bad_records = True
  before = records.skipped_records()['records']
  it = iter(loop.make_data(config, STAGES['base'], str(tmp_path / 'bad'), tokenize, None))
  assert len(_take(it, 3)) == 3  # the bad record is skipped (it repeats forever)
  assert records.skipped_records()['records'] > before


def test_frame_strides_draw_a_stride_per_video_row_and_its_fps(shards):
  """Frame-rate augmentation (fps conditioning): a video row takes every s-th frame of its
  clip, s drawn from the strides that fit, and carries the clip's fps / s; image rows 0."""
  import dataclasses

  src = records.decode(_first_record(shards))  # 16 frames at 8 fps
  stage = STAGES['base']  # 8 frames
  rows = [
    P._VideoRow(stage, False, frame_strides=(1, 2, 3)).random_map(
      records.encode(src), np.random.default_rng(i)
    )
    for i in range(40)
  ]
  rates = sorted({float(r['fps']) for r in rows})
  assert rates == [4.0, 8.0]  # stride 3 would need 22 frames: never drawn
  for r in rows:
    s = int(src.fps / r['fps'])
    want = P.stage_example(records.encode(src), dataclasses.replace(stage, frame_stride=s))
    np.testing.assert_array_equal(r['video'], want['video'])
  batches = _take(iter(_pipe(shards, frame_strides=(1, 2), batch_size=8)), 4)
  for b in batches:
    video = (b['frame_ids'] == 0).all(1)
    assert set(b['fps'][video]) <= {4.0, 8.0} and (b['fps'][~video] == 0).all()
  assert 'fps' not in next(iter(_pipe(shards)))  # without strides: no fps
  with pytest.raises(ValueError, match='frame_strides must be >= 1'):
    P.PipelineConfig(batch_size=1, frame_strides=(0, 2))
