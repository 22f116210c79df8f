"""`python -m byolctl ...`, the same as the `byolctl` command."""

from byolctl import main

main()
