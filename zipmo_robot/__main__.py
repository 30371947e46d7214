from __future__ import annotations

from zipmo_robot.cli import main

raise SystemExit(main())
