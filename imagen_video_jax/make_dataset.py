"""`python -m imagen_video_jax.make_dataset`: the command in `imagen_video_jax.cli.make_dataset`."""

if __name__ == '__main__':
  import runpy

  runpy.run_module('imagen_video_jax.cli.make_dataset', run_name='__main__', alter_sys=True)
