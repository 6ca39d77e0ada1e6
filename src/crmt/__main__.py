"""``python -m crmt``: see :mod:`crmt.cli`."""

from crmt.cli import main

if __name__ == "__main__":
    main()
