"""`python -m cifarzoo` is the same as the `cifarzoo` console script."""
import sys

from cifarzoo.cli import main

if __name__ == "__main__":
    sys.exit(main())
