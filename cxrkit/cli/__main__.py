"""``python -m cxrkit.cli``: the ``cxrkit`` command."""

from . import main

main()
