"""What a plain `pip install .` gives: the wheel's files, the shipped weights found outside a
checkout (or one message saying where to put them), the configs as a package, the extras,
and a video sampled by the installed package in a fresh virtual environment (slow)."""

import email.parser
import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _clean_env(**extra):
  """The environment of a user with no checkout on any path: no PYTHONPATH, own HOME."""
  env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'IMAGEN_VIDEO_JAX_HOME')}
  env.pop('XDG_CACHE_HOME', None)
  return {**env, **extra}


@pytest.fixture(scope='module')
def wheel(tmp_path_factory):
  """The wheel built from a copy of the working tree (tracked and unignored files only, as
  a fresh clone has them), so nothing stale under build/ can slip in."""
  tmp = tmp_path_factory.mktemp('wheel')
  src = tmp / 'src'
  files = subprocess.run(
    ['git', 'ls-files', '-co', '--exclude-standard', '-z'],
    cwd=ROOT,
    capture_output=True,
    check=True,
  ).stdout.split(b'\0')
  for name in filter(None, (f.decode() for f in files)):
    if (ROOT / name).is_file():
      (src / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(ROOT / name, src / name)
  dist = tmp / 'dist'
  res = subprocess.run(
    [sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation']
    + ['--disable-pip-version-check', '-w', str(dist), str(src)],
    capture_output=True,
    text=True,
    timeout=300,
    env=_clean_env(),
  )
  assert res.returncode == 0, res.stderr[-3000:]
  (path,) = dist.glob('imagen_video_jax-*.whl')
  return path


def _metadata(wheel_path):
  with zipfile.ZipFile(wheel_path) as z:
    (name,) = [n for n in z.namelist() if n.endswith('.dist-info/METADATA')]
    return email.parser.Parser().parsestr(z.read(name).decode())


def test_wheel_holds_the_configs_and_the_judge_but_not_the_digits_cascade(wheel):
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
  for config in ('__init__', 'common', 'digits', 'imagen_video'):
    assert f'imagen_video_jax/configs/{config}.py' in names
  for f in ('judge.json', 'params.safetensors'):
    assert f'imagen_video_jax/_shipped/judge/{f}' in names
    with zipfile.ZipFile(wheel) as z:
      assert (
        z.read(f'imagen_video_jax/_shipped/judge/{f}')
        == (ROOT / 'checkpoints' / 'judge' / f).read_bytes()
      )
  assert not [n for n in names if 'digits/' in n and n.endswith('.safetensors')]
  assert not [n for n in names if n.startswith(('tests/', 'configs/', 'checkpoints/'))]
  assert wheel.stat().st_size < 5 * 2**20  # a few MB at most


def test_wheel_metadata_lists_the_extras_and_no_unused_dependency(wheel):
  meta = _metadata(wheel)
  requires = meta.get_all('Requires-Dist')
  assert not [r for r in requires if r.lower().startswith('chex')]
  assert {'tfds', 'notebook', 'reference', 'colab'} <= set(meta.get_all('Provides-Extra'))
  colab = [r for r in requires if "extra == 'colab'" in r or 'extra == "colab"' in r]
  assert colab, requires
  for r in colab:  # Colab's accelerator JAX and its kernel are never replaced
    name = r.split(';')[0].strip().lower()
    assert not name.startswith(('jax', 'ipython', 'ipykernel', 'protobuf')), r
    assert '==' not in name, r
  tfds = [r for r in requires if "extra == 'tfds'" in r or 'extra == "tfds"' in r]
  assert any(r.startswith('tensorflow-datasets') for r in tfds), requires


def test_pretrained_dir_search_order_and_what_it_says_when_nothing_is_found(tmp_path, monkeypatch):
  from imagen_video_jax import shipped

  # As installed: the package outside any checkout, with only the judge inside it.
  package = tmp_path / 'site' / 'imagen_video_jax'
  shutil.copytree(ROOT / 'checkpoints' / 'judge', package / '_shipped' / 'judge')
  monkeypatch.setattr(shipped, '_PACKAGE', str(package))
  monkeypatch.delenv(shipped.HOME_ENV, raising=False)
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
  assert shipped.pretrained_dir('judge') == str(package / '_shipped' / 'judge')
  with pytest.raises(shipped.NotFoundError) as e:
    shipped.pretrained_dir('digits')
  message = str(e.value)
  cache = tmp_path / 'cache' / 'imagen_video_jax' / 'digits'
  assert f'to {cache} (or set IMAGEN_VIDEO_JAX_HOME=DIR' in message
  assert 'Copy checkpoints/digits' in message and str(package / '_shipped' / 'digits') in message
  assert isinstance(e.value, FileNotFoundError)

  # a copy in the cache directory is found; one under $IMAGEN_VIDEO_JAX_HOME wins over it
  cache.mkdir(parents=True)
  (cache / 'cascade.json').write_text('{}')
  assert shipped.pretrained_dir('digits') == str(cache)
  home = tmp_path / 'home'
  (home / 'digits').mkdir(parents=True)
  monkeypatch.setenv(shipped.HOME_ENV, str(home))
  assert shipped.pretrained_dir('digits') == str(cache)  # an incomplete copy is no copy
  (home / 'digits' / 'cascade.json').write_text('{}')
  assert shipped.pretrained_dir('digits') == str(home / 'digits')
  with pytest.raises(ValueError, match='use one of digits, judge'):
    shipped.pretrained_dir('mnist')


def test_in_a_checkout_the_shipped_weights_are_its_checkpoints(monkeypatch):
  import imagen_video_jax as ivj

  monkeypatch.delenv('IMAGEN_VIDEO_JAX_HOME', raising=False)
  assert ivj.pretrained_dir('digits') == str(ROOT / 'checkpoints' / 'digits')
  assert ivj.load_judge().report == ivj.pretrained('judge').report


def test_pretrained_loads_each_shipped_model_from_where_it_is_found(monkeypatch):
  from imagen_video_jax import export, pretrained_loader, shipped
  from imagen_video_jax.evaluation import judge

  monkeypatch.delenv('IMAGEN_VIDEO_JAX_HOME', raising=False)
  pipe = pretrained_loader.pretrained('digits')
  want = export.load_cascade(shipped.pretrained_dir('digits'))
  assert [s.name for s in pipe.stages] == ['base', 'tsr', 'ssr']
  for a, b in zip(pipe.stages, want.stages):
    assert a.spec == b.spec and a.unet == b.unet
    assert all(np.array_equal(x, y) for x, y in zip(_leaves(a.params), _leaves(b.params)))
  assert isinstance(pretrained_loader.pretrained('judge'), judge.Judge)
  with pytest.raises(ValueError, match='use one of digits, judge'):
    pretrained_loader.pretrained('mnist')


def _leaves(tree):
  import jax

  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_require_imports_or_names_the_extra(tmp_path, monkeypatch):
  from imagen_video_jax import _optional

  assert _optional.require('json', 'tfds', 'x') is __import__('json')
  with pytest.raises(_optional.MissingDependencyError) as e:
    _optional.require('no_such_module_ivj', 'tfds', 'The TFDS builder')
  assert str(e.value) == (
    'The TFDS builder needs no_such_module_ivj, which is not installed: '
    "pip install 'imagen_video_jax[tfds]'"
  )
  # Installed, but broken by a missing module of its own: that error, unchanged.
  (tmp_path / 'half_installed_ivj.py').write_text('import no_such_dependency_ivj\n')
  monkeypatch.syspath_prepend(str(tmp_path))
  with pytest.raises(ModuleNotFoundError) as e:
    _optional.require('half_installed_ivj', 'tfds', 'x')
  assert not isinstance(e.value, _optional.MissingDependencyError)
  assert e.value.name == 'no_such_dependency_ivj'


def test_a_missing_optional_dependency_names_its_extra(tmp_path):
  # tensorflow_datasets made unimportable, as when the [tfds] extra is not installed
  code = (
    'import runpy, sys\n'
    "sys.modules['tensorflow_datasets'] = None\n"
    "sys.argv = ['make_dataset', '--format=tfds', f'--output={sys.argv[1]}', '--num_videos=1']\n"
    "runpy.run_module('imagen_video_jax.cli.make_dataset', run_name='__main__')\n"
  )
  res = subprocess.run(
    [sys.executable, '-c', code, str(tmp_path / 'out')],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=tmp_path,
    env=_clean_env(PYTHONPATH=str(ROOT)),
  )
  assert res.returncode != 0
  assert "pip install 'imagen_video_jax[tfds]'" in res.stderr, res.stderr[-2000:]
  assert 'Traceback' not in res.stderr and 'ModuleNotFoundError' not in res.stderr


def _fresh_venv(path, wheel_path):
  """A venv of the base interpreter with the wheel installed and no access to any checkout.
  The pinned dependencies come from the project's own venv through a .pth line, written
  after the wheel is in (so pip never sees that venv's editable install of a checkout and
  leaves it alone); Python runs no .pth file found on such a line, so that editable install
  stays off the path. Installing the dependencies again would download about 2 GB for
  nothing this test checks. Returns (python, its site-packages)."""
  base = getattr(sys, '_base_executable', sys.executable)
  subprocess.run([base, '-m', 'venv', '--without-pip', str(path)], check=True, timeout=300)
  python = path / 'bin' / 'python'
  site = subprocess.run(
    [str(python), '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'],
    capture_output=True,
    text=True,
    check=True,
  ).stdout.strip()
  res = subprocess.run(
    [sys.executable, '-m', 'pip', '--python', str(python), 'install', '-q', '--no-deps']
    + ['--no-index', '--disable-pip-version-check', str(wheel_path)],
    capture_output=True,
    text=True,
    timeout=300,
    env=_clean_env(),  # a checkout on PYTHONPATH would read as installed already
  )
  assert res.returncode == 0, res.stderr[-3000:]
  assert pathlib.Path(site, 'imagen_video_jax', 'shipped.py').is_file()
  pathlib.Path(site, 'project_dependencies.pth').write_text(sysconfig.get_path('purelib') + '\n')
  return python


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_installed_wheel_samples_a_video_from_another_directory(wheel, tmp_path):
  from imagen_video_jax import io

  python = _fresh_venv(tmp_path / 'venv', wheel)
  home = tmp_path / 'user'
  work = tmp_path / 'work'
  work.mkdir(parents=True)
  env = _clean_env(HOME=str(home))
  run = lambda *args: subprocess.run(
    [str(python), *args], capture_output=True, text=True, timeout=900, cwd=work, env=env
  )

  # the installed package, not a checkout; the judge and the configs inside it
  code = (
    'import imagen_video_jax as ivj, imagen_video_jax.configs.digits as d\n'
    'print(ivj.__file__); print(ivj.pretrained_dir("judge"))\n'
    'print(type(ivj.load_judge()).__name__); print(d.get_config("stage=tsr").stage)\n'
  )
  res = run('-c', code)
  assert res.returncode == 0, res.stderr[-3000:]
  package, judge, judge_type, stage = res.stdout.split()
  venv = str(tmp_path / 'venv')
  assert package.startswith(venv) and judge.startswith(venv)
  assert judge_type == 'Judge' and stage == 'tsr'

  # no copy of the digits cascade yet: one message saying where to put it
  res = run('-m', 'imagen_video_jax.sample', '--prompt=a red 3 moving left')
  assert res.returncode != 0 and 'Traceback' not in res.stderr, res.stderr[-3000:]
  assert f'to {home}/.cache/imagen_video_jax/digits' in res.stderr
  assert 'not trained and shipped yet' not in res.stderr

  # copied where it said: the default samples it
  shutil.copytree(ROOT / 'checkpoints' / 'digits', home / '.cache' / 'imagen_video_jax' / 'digits')
  res = run(
    '-m', 'imagen_video_jax.sample', '--prompt=a red 3 moving left', '--steps=4', '--noprogress'
  )
  assert res.returncode == 0, res.stderr[-3000:]
  frames, fps = io.read_mp4(str(work / 'outputs' / 'sample.mp4'))
  assert frames.shape == (16, 128, 128, 3) and fps == pytest.approx(8)
  assert frames.std() > 5  # not blank
  assert np.abs(np.diff(frames.astype(np.float32), axis=0)).mean() > 0.5  # frames that change
