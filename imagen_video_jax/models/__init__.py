"""Pure Flax Linen modules: no I/O, no meshes."""
