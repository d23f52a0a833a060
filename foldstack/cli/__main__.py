"""`python -m foldstack.cli`: the same program as the `foldstack` command."""

from foldstack.cli.main import main

main()
