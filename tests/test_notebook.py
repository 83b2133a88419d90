"""notebooks/sample.ipynb runs headless, top to bottom, on an exported cascade."""

import os

import pytest

from imagen_video_jax import io
from test_sample_cli import exported  # noqa: F401  (the tiny exported cascade fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sample_notebook_runs_and_shows_videos(exported, tmp_path, monkeypatch):  # noqa: F811
  import nbformat
  from nbclient import NotebookClient

  path, stages = exported
  monkeypatch.setenv('IVJ_CHECKPOINTS', path)
  monkeypatch.setenv('IVJ_STEPS', '2')
  monkeypatch.setenv('IVJ_PROMPT', 'a blue 7 moving up')
  work = tmp_path / 'work'
  work.mkdir()
  monkeypatch.setenv('PYTHONPATH', ROOT + os.pathsep + os.environ.get('PYTHONPATH', ''))
  nb = nbformat.read(os.path.join(ROOT, 'notebooks', 'sample.ipynb'), as_version=4)
  NotebookClient(
    nb, timeout=600, kernel_name='python3', resources={'metadata': {'path': str(work)}}
  ).execute()  # raises on error

  outputs = [o for c in nb.cells if c.cell_type == 'code' for o in c.get('outputs', [])]
  html = ''.join(o.get('data', {}).get('text/html', '') for o in outputs)
  assert html.count('<img') >= 2 + len(stages), html[:500]  # 2 samples + one per stage
  assert 'a blue 7 moving up' in html
  text = ''.join(o.get('text', '') for o in outputs)
  assert '2 videos' in text
  last = stages[-1].spec
  frames, fps = io.read_mp4(str(work / 'outputs' / 'notebook_0.mp4'))
  assert frames.shape == (last.frames, 4 * last.height, 4 * last.width, 3)
  assert fps == pytest.approx(stages[-1].fps)
