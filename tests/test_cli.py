"""The command-line programs: `python -m imagen_video_jax.<tool>` for every documented tool,
the package namespace they leave alone, and config files loaded by path from anywhere."""

import concurrent.futures
import json
import os
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLI = ROOT / 'imagen_video_jax' / 'cli'
# Where commands are documented: README, docs, the model card, launch scripts, notebooks,
# benchmarks, configs, make.
DOCS = [
  'README.md',
  'Makefile',
  'launch',
  'notebooks',
  'benchmarks',
  'configs',
  'docs',
  'checkpoints/digits/MODEL_CARD.md',
]


def _env(root=ROOT):
  """PYTHONPATH: `root` first, the checkout itself only when `root` is the checkout."""
  path = [
    p
    for p in os.environ.get('PYTHONPATH', '').split(os.pathsep)
    if p and (root == ROOT or pathlib.Path(p).resolve() != ROOT)
  ]
  return {**os.environ, 'PYTHONPATH': os.pathsep.join([str(root), *path])}


def _run_all(commands, cwd=ROOT, root=ROOT):
  """Runs the argument lists side by side; their CompletedProcesses in order."""
  run = lambda args: subprocess.run(
    [sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=_env(root)
  )
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    return list(pool.map(run, commands))


def _documented_tools():
  files = [
    p
    for d in DOCS
    for p in ([ROOT / d] if (ROOT / d).is_file() else (ROOT / d).rglob('*'))
    if p.is_file()
  ]
  found = set()
  for p in files:
    found |= set(re.findall(r'-m[\'",\s]+imagen_video_jax\.(\w+)', p.read_text(errors='replace')))
  return sorted(found - {'cli'})


def _flags_of(tool):
  return re.findall(r"DEFINE_\w+\(\s*['\"](\w+)['\"]", (CLI / f'{tool}.py').read_text())


def test_every_documented_command_prints_its_usage_and_flags():
  tools = _documented_tools()
  cli_modules = sorted(p.stem for p in CLI.glob('*.py') if not p.stem.startswith('_'))  # _: helpers
  assert tools == cli_modules  # every command is documented, every documented one exists
  modules = [f'imagen_video_jax.{t}' for t in tools] + [f'imagen_video_jax.cli.{t}' for t in tools]
  results = _run_all([['-m', m, '--help'] for m in modules])
  for module, res in zip(modules, results):
    tool = module.rsplit('.', 1)[1]
    # absl's --help prints the __main__ module's docstring and flags, then exits 1.
    assert res.returncode in (0, 1) and 'Traceback' not in res.stderr, (module, res.stderr)
    doc = (CLI / f'{tool}.py').read_text().split('"""')[1].strip().splitlines()[0]
    assert res.stdout.startswith(doc), (module, res.stdout[:500])
    flags = _flags_of(tool)
    assert flags, tool
    for flag in flags:
      assert re.search(rf'^  --(\[no\])?{flag}:', res.stdout, re.M), (module, flag, res.stdout)


def test_python_m_leaves_the_package_functions_in_place():
  # `python -m imagen_video_jax.sample` runs the shim as __main__ without importing it
  # under its name, so the package attribute stays the sampling function.
  check = (
    'import runpy, sys\n'
    'sys.argv = ["{tool}", "--help"]\n'
    'try:\n'
    '  runpy.run_module("imagen_video_jax.{tool}", run_name="__main__", alter_sys=True)\n'
    'except SystemExit:\n'
    '  pass\n'
    'import imagen_video_jax as ivj\n'
    'from {lib} import {tool} as f\n'
    'assert "imagen_video_jax.{tool}" not in sys.modules\n'
    'assert ivj.{tool} is f, ivj.{tool}\n'
    'print("ok")\n'
  )
  libs = {
    'sample': 'imagen_video_jax.diffusion.samplers',
    'import_videos': 'imagen_video_jax.data.importer',
  }
  results = _run_all([['-c', check.format(tool=t, lib=lib)] for t, lib in libs.items()])
  for tool, res in zip(libs, results):
    assert res.returncode == 0 and res.stdout.endswith('ok\n'), (tool, res.stderr[-3000:])
    assert '--seed' in res.stdout or '--manifest' in res.stdout  # the command did run


def test_package_namespace_is_the_public_api():
  code = (
    'import json, types, imagen_video_jax as ivj\n'
    'print(json.dumps({"dir": dir(ivj), "all": ivj.__all__,\n'
    '  "modules": [n for n in dir(ivj) if isinstance(vars(ivj).get(n), types.ModuleType)],\n'
    '  "sample": ivj.sample.__module__, "import_videos": ivj.import_videos.__module__}))\n'
  )
  (res,) = _run_all([['-c', code]])
  assert res.returncode == 0, res.stderr[-3000:]
  got = json.loads(res.stdout)
  assert [n for n in got['dir'] if not n.startswith('__')] == sorted(got['all'])
  assert '__version__' in got['dir']
  assert got['modules'] == []
  assert not {'sys', 'importlib', 'types', 'typing', 'annotations'} & set(got['dir'])
  assert got['sample'] == 'imagen_video_jax.diffusion.samplers'
  assert got['import_videos'] == 'imagen_video_jax.data.importer'


def test_config_files_load_by_path_from_any_directory(tmp_path):
  # absl's config_flags loads --config=FILE by path; the files share configs/common.py.
  # Only the package is importable (as when installed), not the checkout's `configs`.
  (tmp_path / 'site').mkdir()
  (tmp_path / 'site' / 'imagen_video_jax').symlink_to(ROOT / 'imagen_video_jax')
  script = tmp_path / 'load.py'
  script.write_text(
    'from absl import app\n'
    'from ml_collections import config_flags\n'
    "_CONFIG = config_flags.DEFINE_config_file('config')\n"
    'app.run(lambda argv: print(_CONFIG.value.name, _CONFIG.value.stage))\n'
  )
  configs = ROOT / 'configs'
  args = [
    f'{configs}/digits.py:stage=tsr,tiny=True',
    f'{configs}/imagen_video.py:stage=tsr2',
    f'{configs}/digits.py:stage=sr9',
    f'{configs}/imagen_video.py:stage=base,tiny=True',
  ]
  ok_tiny, ok_paper, bad_stage, bad_key = _run_all(
    [[str(script), f'--config={a}'] for a in args], cwd=tmp_path, root=tmp_path / 'site'
  )
  assert ok_tiny.returncode == 0 and ok_tiny.stdout.split() == ['digits_tsr_tiny', 'tsr'], (
    ok_tiny.stderr[-3000:]
  )
  assert ok_paper.returncode == 0 and ok_paper.stdout.split()[-1] == 'tsr2', ok_paper.stderr[-3000:]
  assert bad_stage.returncode != 0
  assert "configs/digits.py: stage='sr9'; use one of base, tsr, ssr" in bad_stage.stderr
  assert bad_key.returncode != 0
  assert (
    "configs/imagen_video.py: unknown argument 'tiny'; use stage=base|tsr1|ssr1|ssr2|tsr2|tsr3|ssr3"
  ) in bad_key.stderr


# absl's own flags, which every program accepts.
_ABSL_FLAGS = {'help', 'helpfull', 'helpshort', 'verbosity', 'v', 'logtostderr', 'flagfile'}


def _documented_flags():
  """{tool: {flag: 'file: command'}} for every `python -m imagen_video_jax.<tool> ...` written
  in the docs (continuation lines joined; `--config.x` overrides left to the configs)."""
  found = {}
  files = [
    p
    for d in DOCS
    for p in ([ROOT / d] if (ROOT / d).is_file() else (ROOT / d).rglob('*'))
    if p.is_file()
  ]
  for p in files:
    text = p.read_text(errors='replace').replace('\\\\\n', ' ').replace('\\\n', ' ')
    text = text.replace('\\\\n', '\n').replace('\\n', '\n')  # notebook JSON strings
    for tool, rest in re.findall(r'-m[\'",\s]+imagen_video_jax\.(\w+)([^\n]*)', text):
      rest = rest.split(' #', 1)[0].split('`', 1)[0]  # a comment or the end of inline code
      for flag in re.findall(r'(?<![\w-])--([a-z][a-z0-9_]*)(?![\w.])', rest):
        found.setdefault(tool, {})[flag] = f'{p.relative_to(ROOT)}: {rest.strip()[:120]}'
  return found


def test_every_flag_the_docs_use_exists():
  """A documented command with a flag its program does not define would fail when a reader
  runs it; every flag written after `python -m imagen_video_jax.<tool>` must be one of its
  flags (`--helpfull`: its own and the modules' it uses) or absl's."""
  documented = {t: f for t, f in _documented_flags().items() if t != 'cli'}
  assert sum(len(f) for f in documented.values()) > 30  # the parser finds the commands
  tools = sorted(documented)
  results = _run_all([['-m', f'imagen_video_jax.{t}', '--helpfull'] for t in tools])
  for tool, res in zip(tools, results):
    known = set(re.findall(r'^\s+--(?:\[no\])?(\w+):', res.stdout, re.M)) | _ABSL_FLAGS
    assert len(known) > len(_ABSL_FLAGS), (tool, res.stdout[-2000:], res.stderr[-2000:])
    unknown = {
      f: where
      for f, where in documented[tool].items()
      if f not in known and not (f.startswith('no') and f[2:] in known)
    }
    assert not unknown, (tool, unknown)
