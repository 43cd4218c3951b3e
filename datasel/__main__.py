"""`python -m datasel ...` runs the same command line as the `datasel` script."""

from datasel.cli import main

main()
