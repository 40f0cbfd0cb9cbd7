"""``python -m cxrkit``: the same as the ``cxrkit`` command."""

from .cli import main

if __name__ == "__main__":
    main()
