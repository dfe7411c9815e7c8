"""`python -m petseg` runs the command-line interface."""

from petseg.cli import main

raise SystemExit(main())
