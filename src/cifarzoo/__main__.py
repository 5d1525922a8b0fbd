"""`python -m cifarzoo` is the same as the `cifarzoo` console script."""
import sys

if __name__ == "__main__":
    try:
        from cifarzoo.cli import main
    except KeyboardInterrupt:  # Ctrl-C during the first imports: one line, as anywhere later
        print("cifarzoo: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(main())
