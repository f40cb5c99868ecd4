"""mountfs: mount object storage through FUSE (pyfuse3 + trio)."""
