"""`python -m kdserve.cli …`: the `kdserve` command."""

from kdserve.cli import main

main()
