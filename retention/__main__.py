"""Allow ``python -m retention``.

structlog imports ``rich``, when it is installed, for tracebacks this CLI never draws with
it: ``logs.configure`` turns an exception into text (``format_exc_info``) before any
renderer sees it. Where rich is installed (import-linter, a test extra, brings it) that
import was 0.12 to 0.24 s of the 0.8 to 0.95 s of CPU a start costs, and the test suite
starts this module dozens of times. So rich is hidden from this process before the CLI is
imported; a program that imports ``retention`` itself keeps its ``rich``.
"""

import sys

sys.modules.setdefault("rich", None)  # type: ignore[arg-type]  # None: "import rich" fails

from retention.cli import main  # noqa: E402  (after rich is hidden, which is the point)

main()
