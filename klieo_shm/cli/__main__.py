"""``python -m klieo_shm.cli`` runs ``klieo-shm``."""

from __future__ import annotations

import sys

from . import main

sys.exit(main())
