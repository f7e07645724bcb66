"""`python -m dfd` runs the command line (the same as the `dfd` script)."""
from dfd.cli import main

main()
