"""The on-disk cache: block files, the journal of object records, and the write-back queue.

This package knows storage only through `cache.storage.Storage`; it never imports mountfs or
pyfuse3, and never decides which errno a program sees.
"""
