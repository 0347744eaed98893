"""``python -m broker.scheduler --url URL[,URL]``: see ``broker.scheduler.service``."""

import sys

from broker.scheduler.service import main

if __name__ == "__main__":
    sys.exit(main())
