"""Make cluster files from other sources (for now: a Vagrant lab).

Kept light on purpose: `clusterctl.inventory.cli` is imported when the main CLI starts, so the
names below are only loaded (with PyYAML and pydantic behind them) when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "PLAN_FILE_NAME",
    "VagrantHost",
    "cluster_file_from_vagrant",
    "import_vagrant",
    "parse_ssh_config",
    "read_private_addresses",
]

if TYPE_CHECKING:
    from clusterctl.inventory.vagrant import (
        PLAN_FILE_NAME,
        VagrantHost,
        cluster_file_from_vagrant,
        import_vagrant,
        parse_ssh_config,
        read_private_addresses,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        from clusterctl.inventory import vagrant

        return getattr(vagrant, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
