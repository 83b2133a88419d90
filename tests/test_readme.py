"""The README's Python tour runs as written."""

import pathlib
import re

import numpy as np


def test_readme_tour_runs():
  text = (pathlib.Path(__file__).parents[1] / 'README.md').read_text()
  blocks = re.findall(r'```python\n(.*?)```', text, re.S)
  assert blocks, 'the README has no python example'
  scope: dict = {}
  exec(compile(blocks[0], 'README.md', 'exec'), scope)  # noqa: S102 - our own README
  video = np.asarray(scope['video'])
  assert video.shape == (2, 8, 16, 16, 3)
  assert np.all(np.isfinite(video)) and np.abs(video).max() <= 1.0  # dynamic thresholding
  assert np.isfinite(float(scope['loss']))
