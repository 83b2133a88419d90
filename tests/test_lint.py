"""The tree passes `make lint`: ruff's checks and its formatter (settings in pyproject.toml)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ruff(*args, cwd=ROOT):
  return subprocess.run(
    [sys.executable, '-m', 'ruff', *args, '--no-cache'],
    cwd=cwd,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_the_tree_has_no_lint_errors():
  r = _ruff('check', '.')
  assert r.returncode == 0, f'`make lint` finds:\n{r.stdout}{r.stderr}\n(`make format` fixes most)'


def test_the_tree_is_formatted():
  r = _ruff('format', '--check', '.')
  assert r.returncode == 0, f'not formatted (run `make format`):\n{r.stdout}{r.stderr}'


def test_the_settings_are_the_projects(tmp_path):
  """The checks above read pyproject.toml: 2-space indents and single quotes pass,
  4 spaces, double quotes and an unused import do not."""
  config = ['--config', os.path.join(ROOT, 'pyproject.toml')]
  good = tmp_path / 'good.py'
  good.write_text("def f(x):\n  return {'x': x}\n")
  assert _ruff('format', '--check', *config, str(good)).returncode == 0
  assert _ruff('check', *config, str(good)).returncode == 0
  for text in ('def f(x):\n    return {"x": x}\n', 'def f(x):\n  return {"x": x}\n'):
    bad = tmp_path / 'bad.py'
    bad.write_text(text)
    assert _ruff('format', '--check', *config, str(bad)).returncode == 1, text
  unused = tmp_path / 'unused.py'
  unused.write_text('import os\n')
  r = _ruff('check', *config, str(unused))
  assert r.returncode == 1 and 'F401' in r.stdout
