"""``python -m executor --url URL --slots N --pool NAME --work-dir DIR``: see
``executor.service``."""

import sys

from executor.service import main

if __name__ == "__main__":
    sys.exit(main())
