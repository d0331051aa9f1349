"""How the ``python -m personalize.…`` commands end on unusable input: one line naming the problem, exit code 2,
as the ``personalize`` command does (:data:`EXIT_BAD_INPUT`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from simulators.nifti import NiftiError

EXIT_BAD_INPUT = 2


def run_command(main: Callable[[Sequence[str] | None], object], prog: str,
                argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)``; a :class:`ValueError`, :class:`simulators.nifti.NiftiError` or
    :class:`FileNotFoundError` becomes ``prog: error: <message>`` on one line of standard error and exit code 2."""
    try:
        main(argv)
    except (NiftiError, ValueError, FileNotFoundError) as error:
        print(f"{prog}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0
