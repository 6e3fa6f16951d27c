"""The network drivers, one module each, all implementing drivers/base.py::NetworkDriver."""

from __future__ import annotations

from clusterctl.network.drivers.base import NetworkDriver, NetworkPlan
from clusterctl.network.drivers.overlay import OverlayDriver
from clusterctl.network.drivers.routed import RoutedDriver
from clusterctl.network.drivers.weave import WeaveDriver
from clusterctl.network.drivers.wireguard import WireguardDriver

DRIVERS: dict[str, NetworkDriver] = {d.name: d for d in (OverlayDriver(), RoutedDriver(), WeaveDriver(), WireguardDriver())}

__all__ = ["DRIVERS", "NetworkDriver", "NetworkPlan"]
