"""Data: the Moving Digits world, the real-video importer and the grain pipelines."""
