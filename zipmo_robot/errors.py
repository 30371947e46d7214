"""`UserError`: a problem with the user's input or machine, raised by library code and printed by the CLI.

It lives apart from the CLI so that library modules (envs, policy, data, checkpoints) never import the CLI.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or machine: printed as one clear message, exit code 2."""
