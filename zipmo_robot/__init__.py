"""zipmo-robot: ZipMo motion-embedding policies in LIBERO.

Importing the package is cheap on purpose (no torch, no LIBERO): heavy imports happen inside commands.
"""

from __future__ import annotations

__version__ = "0.1.0"
