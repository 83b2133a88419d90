"""notebooks/sample.ipynb runs headless, top to bottom, on an exported cascade; its set-up
cell installs the package for Colab without touching the runtime's JAX or kernel."""

import ast
import configparser
import os
import subprocess
import sys

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
  monkeypatch.setenv('IVJ_REPO', ROOT)  # the set-up cell's REPO: this checkout
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
  import jax

  assert f'runs on {jax.default_backend().upper()}: ' in text  # says which device it uses
  assert f'imagen_video_jax 0.1.0 from {os.path.join(ROOT, "imagen_video_jax")}' in text
  last = stages[-1].spec
  frames, fps = io.read_mp4(str(work / 'outputs' / 'notebook_0.mp4'))
  assert frames.shape == (last.frames, 4 * last.height, 4 * last.width, 3)
  assert fps == pytest.approx(stages[-1].fps)


def _setup_cell():
  import nbformat

  nb = nbformat.read(os.path.join(ROOT, 'notebooks', 'sample.ipynb'), as_version=4)
  code = [c.source for c in nb.cells if c.cell_type == 'code']
  (cell,) = [c for c in code if 'def pip_command' in c]
  return cell, code


def test_setup_cell_installs_the_colab_extra_and_leaves_jax_and_the_kernel_alone():
  cell, code = _setup_cell()
  (fn,) = [n for n in ast.parse(cell).body if isinstance(n, ast.FunctionDef)]
  namespace = {'sys': sys}
  exec(compile(ast.Module([fn], []), 'setup-cell', 'exec'), namespace)
  argv = namespace['pip_command']('/content/imagen_video_jax_src')
  assert argv[:4] == [sys.executable, '-m', 'pip', 'install']
  options = [a for a in argv[4:] if a.startswith('-')]
  assert set(options) <= {'-q'}, options  # no --upgrade, --force-reinstall, -I, --no-deps
  assert [a for a in argv[4:] if not a.startswith('-')] == ['/content/imagen_video_jax_src[colab]']
  # pip runs from nowhere else: no !pip or %pip line, no other pip command
  source = '\n'.join(code)
  assert source.count("'pip'") == 1
  assert not [ln for ln in source.splitlines() if ln.lstrip().startswith(('!', '%'))]
  # and the [colab] extra requires nothing Colab's runtime provides, pinned or not
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(ROOT, 'setup.cfg'))
  colab = cfg['options.extras_require']['colab'].split()
  assert colab
  for req in colab:
    assert not req.lower().startswith(('jax', 'ipython', 'ipykernel', 'protobuf')), req
    assert '==' not in req, req


def test_setup_cell_without_the_package_or_repo_says_what_to_set(tmp_path):
  cell, _ = _setup_cell()
  code = "import sys\nsys.modules['imagen_video_jax'] = None\n" + cell
  env = {k: v for k, v in os.environ.items() if k != 'IVJ_REPO'}
  res = subprocess.run(
    [sys.executable, '-c', code], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120
  )
  assert res.returncode != 0
  assert 'Set REPO (first cell) to the git URL of imagen_video_jax' in res.stderr, res.stderr
  assert not list(tmp_path.iterdir())  # nothing cloned, nothing installed
