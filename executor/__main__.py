"""``python -m executor --url URL --slots N --pool NAME --work-dir DIR``: parse, build the
settings, run until SIGINT/SIGTERM."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from broker.errors import TaskbusError, exit_status
from executor.daemon import run
from executor.settings import ExecutorSettings

log = logging.getLogger("executor")


def main(argv: Sequence[str] | None = None) -> int:
    settings = ExecutorSettings.from_cli(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        run(settings)
    except TaskbusError as exc:
        log.error("%s", exc)
        return exit_status(exc)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
