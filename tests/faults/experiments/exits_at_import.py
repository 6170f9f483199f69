"""Calls ``sys.exit(3)`` while being imported (issue 20, item 16)."""

import sys

sys.exit(3)
