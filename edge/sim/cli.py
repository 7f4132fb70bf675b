"""mes-sim: equipment simulators (arrive with the edge issue; this entry point reserves the name)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print(
        "mes-sim: the line simulators are not part of this release yet (see docs/ROADMAP.md)", file=sys.stderr
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
