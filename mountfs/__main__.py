"""`python -m mountfs` runs the command line."""
from mountfs.cli import main

raise SystemExit(main())
