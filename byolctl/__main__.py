"""`python -m byolctl ...`, the same as the `byolctl` command."""

from byolctl.cli import main

main()
