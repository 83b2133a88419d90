"""Builds the package (metadata in setup.cfg). The wheel also holds the shipped judge,
checkpoints/judge (0.5 MB), as imagen_video_jax/_shipped/judge, where
imagen_video_jax.pretrained_dir('judge') finds it after a plain `pip install`.
The digits cascade (32 MB) stays out of the wheel; imagen_video_jax/shipped.py says where
a copy is looked for."""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
IN_WHEEL = ('judge',)  # checkpoints/NAME -> imagen_video_jax/_shipped/NAME


class BuildPyWithCheckpoints(build_py):
  def run(self):
    super().run()
    if getattr(self, 'editable_mode', False):
      return  # an editable install imports from the checkout, which finds checkpoints/ itself
    for name in IN_WHEEL:
      src = os.path.join(ROOT, 'checkpoints', name)
      if not os.path.isdir(src):
        raise FileNotFoundError(f'{src} is missing: the wheel ships it')
      shutil.copytree(
        src, os.path.join(self.build_lib, 'imagen_video_jax', '_shipped', name), dirs_exist_ok=True
      )


setup(cmdclass={'build_py': BuildPyWithCheckpoints})
