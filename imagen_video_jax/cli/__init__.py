"""The command-line programs: `python -m imagen_video_jax.<name>` runs `cli/<name>.py`."""
