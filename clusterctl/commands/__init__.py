"""Pure command builders: every remote action is an argv tuple, rendered with shlex."""

from clusterctl.commands.base import Cmd, Script

__all__ = ["Cmd", "Script"]
