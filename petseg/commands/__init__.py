"""Subcommands of the `petseg` command-line interface, one module each."""
