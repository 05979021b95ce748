"""Pulumi entry point (``main: infrastructure/`` in Pulumi.yaml): read config, declare, export."""

from __future__ import annotations

import pulumi

from infrastructure.config import load_config
from infrastructure.stack import build_stack

for key, output in build_stack(load_config()).items():
    pulumi.export(key.value, output)
