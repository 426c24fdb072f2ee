"""``python -m pdsim``: the ``pdsim`` command (for machines where the console script is not installed)."""

from pdsim.cli import main

if __name__ == "__main__":
    main()
