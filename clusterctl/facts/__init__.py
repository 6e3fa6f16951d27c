"""Host facts: the probe script (one round trip) and its pure parser."""

from clusterctl.facts.parser import HostFacts, parse_probe_output, probe_script

__all__ = ["HostFacts", "parse_probe_output", "probe_script"]
