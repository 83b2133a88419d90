"""The package's shape, checked statically (pure `ast`, nothing is imported).

* No import cycles between the package's modules, function-local imports included
  (a cycle hidden inside functions still breaks whoever imports one of its modules
  first, and makes the modules impossible to understand one at a time).
* No library module imports a command-line module (docs/design.md, 'Layout').
* The design notes the code cites live in the repository, and every section they cite
  exists.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = 'imagen_video_jax'
CLI_PACKAGE = f'{PACKAGE}.cli'
DESIGN_DOC = 'docs/design.md'


# ------------------------------------------------------------------------ import graph
@dataclasses.dataclass(frozen=True)
class Import:
  source: str  # the importing module
  target: str  # a module of the package
  path: str  # the importing file, relative to the root
  line: int


def find_modules(root: str, package: str) -> dict[str, str]:
  """Dotted module name -> file path, for every .py file of `package` under `root`.

  A package's `__init__.py` is the package's own module (`a.b`, not `a.b.__init__`).
  """
  modules = {}
  base = os.path.join(root, *package.split('.'))
  for dirpath, dirnames, filenames in os.walk(base):
    dirnames[:] = sorted(d for d in dirnames if d != '__pycache__' and not d.startswith('.'))
    rel = os.path.relpath(dirpath, root)
    parts = rel.split(os.sep)
    for f in sorted(filenames):
      if not f.endswith('.py'):
        continue
      name = parts if f == '__init__.py' else parts + [f[:-3]]
      modules['.'.join(name)] = os.path.join(dirpath, f)
  return modules


def _is_type_checking(test: ast.expr) -> bool:
  """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`."""
  return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or (
    isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING'
  )


def _import_nodes(tree: ast.AST):
  """Every Import / ImportFrom node, at any depth, except under `if TYPE_CHECKING:`."""
  stack = [tree]
  while stack:
    node = stack.pop()
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
      continue
    if isinstance(node, ast.If) and _is_type_checking(node.test):
      stack.extend(node.orelse)  # the `else:` branch runs
      continue
    stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str, modules: dict[str, str]) -> str | None:
  """The module `name` names: itself, or its longest prefix that is a module."""
  parts = name.split('.')
  while parts:
    candidate = '.'.join(parts)
    if candidate in modules:
      return candidate
    parts.pop()
  return None


def _is_package(module: str, modules: dict[str, str]) -> bool:
  return os.path.basename(modules[module]) == '__init__.py'


def imports_of(module: str, modules: dict[str, str], root: str) -> list[Import]:
  """The package modules `module` imports explicitly (parents' __init__ not implied)."""
  path = modules[module]
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read(), filename=path)
  rel = os.path.relpath(path, root)
  out = []
  for node in _import_nodes(tree):
    targets = []
    if isinstance(node, ast.Import):  # import a.b.c [as x]
      targets = [_resolve(alias.name, modules) for alias in node.names]
    else:
      if node.level:  # relative: from the module's package, up level - 1
        pkg = module.split('.') if _is_package(module, modules) else module.split('.')[:-1]
        if node.level - 1 > len(pkg):
          raise ValueError(f'{rel}:{node.lineno}: relative import beyond the top package')
        pkg = pkg[: len(pkg) - (node.level - 1)]
        base = '.'.join(pkg + ([node.module] if node.module else []))
      else:
        base = node.module
      for alias in node.names:
        sub = f'{base}.{alias.name}'
        if alias.name != '*' and sub in modules:  # from a.b import c, c a submodule
          targets.append(sub)
        else:  # from a.b import name: a name defined in a.b
          targets.append(_resolve(base, modules))
    for t in targets:
      if t is not None and t != module:
        out.append(Import(module, t, rel, node.lineno))
  return out


def import_graph(root: str, package: str) -> tuple[dict[str, list[Import]], dict[str, str]]:
  """(module -> its imports of package modules, module -> path)."""
  modules = find_modules(root, package)
  return {m: imports_of(m, modules, root) for m in modules}, modules


def find_cycles(graph: dict[str, list[Import]]) -> list[list[Import]]:
  """One cycle for every strongly connected component that has one (Tarjan), each as
  the imports along it, starting from the component's smallest module name."""
  adj = {m: sorted({i.target for i in imps if i.target in graph}) for m, imps in graph.items()}
  index, low, on_stack, stack, sccs = {}, {}, set(), [], []
  counter = [0]

  def strongconnect(v):  # iterative: a deep package must not hit the recursion limit
    work = [(v, iter(adj[v]))]
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on_stack.add(v)
    while work:
      node, it = work[-1]
      for w in it:
        if w not in index:
          index[w] = low[w] = counter[0]
          counter[0] += 1
          stack.append(w)
          on_stack.add(w)
          work.append((w, iter(adj[w])))
          break
        if w in on_stack:
          low[node] = min(low[node], index[w])
      else:
        work.pop()
        if work:
          low[work[-1][0]] = min(low[work[-1][0]], low[node])
        if low[node] == index[node]:
          scc = []
          while True:
            w = stack.pop()
            on_stack.discard(w)
            scc.append(w)
            if w == node:
              break
          sccs.append(scc)

  for v in sorted(adj):
    if v not in index:
      strongconnect(v)

  cycles = []
  for scc in sccs:
    members = set(scc)
    if len(scc) == 1:
      continue  # self-imports are dropped in imports_of
    start = min(scc)
    # Shortest path back to `start` within the component (BFS): a readable cycle.
    prev = {start: None}
    queue = [start]
    end = None
    while queue and end is None:
      nxt = []
      for u in queue:
        for w in adj[u]:
          if w not in members:
            continue
          if w == start:
            end = u
            break
          if w not in prev:
            prev[w] = u
            nxt.append(w)
        if end is not None:
          break
      queue = nxt
    path = [end]
    while prev[path[-1]] is not None:
      path.append(prev[path[-1]])
    path.reverse()  # start ... end, then end -> start closes it
    hops = list(zip(path, path[1:] + [start]))
    cycles.append([next(i for i in graph[a] if i.target == b) for a, b in hops])
  return sorted(cycles, key=lambda c: [i.target for i in c])


def format_cycle(cycle: list[Import]) -> str:
  lines = [' -> '.join([cycle[0].source] + [i.target for i in cycle])]
  lines += [f'    {i.path}:{i.line} imports {i.target}' for i in cycle]
  return '\n'.join(lines)


# -------------------------------------------------------------- command-line modules
def _runs_app(tree: ast.AST) -> bool:
  """Calls `app.run(...)` (absl) anywhere."""
  for node in ast.walk(tree):
    if (
      isinstance(node, ast.Call)
      and isinstance(node.func, ast.Attribute)
      and (node.func.attr == 'run')
    ):
      owner = node.func.value
      if (isinstance(owner, ast.Name) and owner.id == 'app') or (
        isinstance(owner, ast.Attribute) and owner.attr == 'app'
      ):
        return True
  return False


def _is_main_guard(node: ast.stmt) -> bool:
  if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
    return False
  sides = [node.test.left, *node.test.comparators]
  return any(isinstance(s, ast.Name) and s.id == '__name__' for s in sides) and any(
    isinstance(s, ast.Constant) and s.value == '__main__' for s in sides
  )


def _only_main_guard(tree: ast.Module) -> bool:
  """Everything but the docstring and `from __future__` is under `if __name__ == ...`."""
  body = list(tree.body)
  if (
    body
    and isinstance(body[0], ast.Expr)
    and isinstance(body[0].value, ast.Constant)
    and (isinstance(body[0].value.value, str))
  ):
    body = body[1:]
  body = [s for s in body if not (isinstance(s, ast.ImportFrom) and s.module == '__future__')]
  return bool(body) and all(_is_main_guard(s) for s in body)


def cli_modules(modules: dict[str, str], package: str = PACKAGE) -> set[str]:
  """The command-line modules: the `<package>.cli` package, and the package's top-level
  modules that run `app.run` or are shims (all code under `if __name__ == '__main__'`)."""
  cli_pkg = f'{package}.cli'
  out = set()
  for m, path in modules.items():
    if m == cli_pkg or m.startswith(cli_pkg + '.'):
      out.add(m)
      continue
    parent, _, _ = m.rpartition('.')
    if parent != package or os.path.basename(path) == '__init__.py':
      continue
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read(), filename=path)
    if _runs_app(tree) or _only_main_guard(tree):
      out.add(m)
  return out


def library_imports_of_cli(graph: dict[str, list[Import]], cli: set[str]) -> list[str]:
  return sorted(
    f'{i.path}:{i.line}: library module {m} imports command-line module {i.target}'
    for m, imps in graph.items()
    if m not in cli
    for i in imps
    if i.target in cli
  )


# ------------------------------------------------------------------------------ tests
def test_the_package_has_no_import_cycles():
  graph, modules = import_graph(ROOT, PACKAGE)
  assert len(modules) > 20, f'found only {sorted(modules)}: is ROOT right?'
  cycles = find_cycles(graph)
  assert not cycles, 'import cycles (function-local imports included):\n' + '\n'.join(
    format_cycle(c) for c in cycles
  )


def test_no_library_module_imports_a_command_line_module():
  graph, modules = import_graph(ROOT, PACKAGE)
  cli = cli_modules(modules)
  # Whatever the layout (tools at the top level, or in cli/ with top-level shims), the
  # training tool is a command-line module.
  assert f'{PACKAGE}.train' in cli or f'{CLI_PACKAGE}.train' in cli, sorted(cli)
  assert f'{PACKAGE}.parallel' not in cli and PACKAGE not in cli
  problems = library_imports_of_cli(graph, cli)
  assert not problems, '\n'.join(problems)


def _write(root, rel: str, text: str = '') -> None:
  path = root / rel
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def test_the_graph_sees_every_kind_of_import_and_finds_hidden_cycles(tmp_path):
  _write(tmp_path, 'pkg/__init__.py', '_EXPORTS = {"f": "pkg.a"}\n')  # strings: no edge
  _write(tmp_path, 'pkg/sub/__init__.py')
  _write(tmp_path, 'pkg/sub/c.py', 'X = 1\n')
  _write(tmp_path, 'pkg/a.py', 'import pkg.sub.c\n\ndef f():\n  from pkg import b\n')
  _write(
    tmp_path,
    'pkg/b.py',
    'class B:\n  def m(self):\n    from .sub import c as _c\n    from .sub.c import X\n',
  )
  _write(tmp_path, 'pkg/sub/d.py', 'from .. import a\nfrom ..sub import c\n')
  _write(
    tmp_path,
    'pkg/e.py',
    'from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n'
    '  from pkg import a\nelse:\n  import pkg.sub.d\n',
  )
  _write(tmp_path, 'pkg/g.py', 'from pkg.sub import *\nimport os, json\n')
  graph, modules = import_graph(str(tmp_path), 'pkg')
  edges = {m: sorted({i.target for i in imps}) for m, imps in graph.items()}
  assert edges == {
    'pkg': [],
    'pkg.a': ['pkg.b', 'pkg.sub.c'],  # import a.b.c; function-local from-import
    'pkg.b': ['pkg.sub.c'],  # relative, in a method; submodule and name
    'pkg.sub': [],
    'pkg.sub.c': [],
    'pkg.sub.d': ['pkg.a', 'pkg.sub.c'],  # from .. import a (a module of the parent)
    'pkg.e': ['pkg.sub.d'],  # TYPE_CHECKING skipped, its else kept
    'pkg.g': ['pkg.sub'],  # star import: the package itself
  }
  assert find_cycles(graph) == []

  # A cycle only function-local imports make: c -> d -> a -> b ... -> c.
  _write(tmp_path, 'pkg/sub/c.py', 'def f():\n  from pkg.sub import d\n')
  graph, modules = import_graph(str(tmp_path), 'pkg')
  cycles = find_cycles(graph)
  assert [[i.target for i in c] for c in cycles] == [['pkg.sub.c', 'pkg.sub.d', 'pkg.a']]
  assert cycles[0][0].path == os.path.join('pkg', 'a.py') and cycles[0][0].line == 1
  text = format_cycle(cycles[0])
  assert text.startswith('pkg.a -> pkg.sub.c -> pkg.sub.d -> pkg.a'), text


def test_command_line_modules_in_either_layout(tmp_path):
  _write(tmp_path, 'pkg/__init__.py')
  _write(tmp_path, 'pkg/lib.py', 'def f():\n  from pkg import tool\n')
  _write(
    tmp_path,
    'pkg/tool.py',
    'from absl import app\nfrom pkg import lib\n'
    'def main(argv):\n  pass\n'
    "if __name__ == '__main__':\n  app.run(main)\n",
  )
  _write(tmp_path, 'pkg/cli/__init__.py')
  _write(
    tmp_path,
    'pkg/cli/train.py',
    'import absl.app\nfrom pkg import lib\ndef main(argv):\n  absl.app.run(main)\n',
  )
  _write(
    tmp_path,
    'pkg/train.py',
    '"""Shim."""\nfrom __future__ import annotations\n'
    "if __name__ == '__main__':\n"
    '  from pkg.cli import train\n  train.main([])\n',
  )
  _write(tmp_path, 'pkg/guarded.py', "X = 1\nif __name__ == '__main__':\n  print(X)\n")
  _write(tmp_path, 'pkg/sub/__init__.py')
  _write(tmp_path, 'pkg/sub/runner.py', 'from absl import app\napp.run(print)\n')
  graph, modules = import_graph(str(tmp_path), 'pkg')
  cli = cli_modules(modules, 'pkg')
  # Library: code outside a main guard, not in cli/, and only top-level modules count.
  assert cli == {'pkg.tool', 'pkg.cli', 'pkg.cli.train', 'pkg.train'}
  assert library_imports_of_cli(graph, cli) == [
    f'{os.path.join("pkg", "lib.py")}:2: library module pkg.lib imports command-line '
    'module pkg.tool'
  ]
  _write(tmp_path, 'pkg/lib.py', 'X = 1\n')
  graph, modules = import_graph(str(tmp_path), 'pkg')
  assert library_imports_of_cli(graph, cli_modules(modules, 'pkg')) == []


# ----------------------------------------------------------------------- design notes
# Spelled in pieces so that this file does not match its own checks.
_FORBIDDEN = ('DESIGN' + ' \u00a7', '..' + '/shared', 'DESIGN' + '.md')
# the doc's path then ", 'Section'" or "#anchor"
_REFERENCE = re.compile(r"docs/design\.md(?:#([A-Za-z0-9_-]+)|,\s*'([^'\n]+)')")


def _tracked_text_files() -> dict[str, str]:
  try:
    names = (
      subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, check=True, capture_output=True)
      .stdout.decode()
      .split('\0')
    )
  except (OSError, subprocess.CalledProcessError):
    pytest.skip('not a git checkout')
  out = {}
  for name in filter(None, names):
    path = os.path.join(ROOT, name)
    if not os.path.isfile(path):
      continue  # deleted in the work tree
    with open(path, 'rb') as f:
      data = f.read()
    if b'\0' in data[:8192]:
      continue
    try:
      out[name] = data.decode('utf-8')
    except UnicodeDecodeError:
      continue
  return out


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
  return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def _headings(markdown: str) -> list[str]:
  return [m.group(1).strip() for m in re.finditer(r'^#{1,6}\s+(.+?)\s*#*$', markdown, re.M)]


def test_design_notes_are_in_the_repository_and_cited_sections_exist():
  files = _tracked_text_files()
  bad = [
    f'{name}:{n}: {line.strip()}'
    for name, text in files.items()
    for n, line in enumerate(text.splitlines(), 1)
    if any(s in line for s in _FORBIDDEN)
  ]
  assert not bad, 'references to design notes outside the repository:\n' + '\n'.join(bad)

  assert DESIGN_DOC in files, f'{DESIGN_DOC} is missing (or not tracked)'
  headings = _headings(files[DESIGN_DOC])
  slugs = {_slug(h) for h in headings}
  assert len(slugs) == len(headings), f'two headings share an anchor: {headings}'
  refs = [
    (name, m.group(1), m.group(2))
    for name, text in files.items()
    for m in _REFERENCE.finditer(text)
  ]
  cited_by = {name for name, _, _ in refs}
  for name in (
    'imagen_video_jax/models/unet.py',
    'imagen_video_jax/diffusion/samplers.py',
    'imagen_video_jax/parallel.py',
  ):
    assert name in cited_by, f'{name} no longer cites {DESIGN_DOC}'
  missing = [
    f'{name}: {anchor or title!r}'
    for name, anchor, title in refs
    if (anchor is not None and anchor not in slugs) or (title is not None and title not in headings)
  ]
  assert not missing, (
    f'sections cited but not in {DESIGN_DOC} (headings: {headings}):\n' + '\n'.join(missing)
  )


def test_section_references_are_checked(tmp_path):
  text = "x (docs/design.md, 'The U-Net') [y](docs/design.md#scale-out) docs/design.md alone"
  found = [(m.group(1), m.group(2)) for m in _REFERENCE.finditer(text)]
  assert found == [(None, 'The U-Net'), ('scale-out', None)]
  assert _slug('The U-Net') == 'the-u-net' and _slug('Scale-out') == 'scale-out'
  assert _headings('# Title\n\ntext\n## Tensor conventions ##\n') == ['Title', 'Tensor conventions']
