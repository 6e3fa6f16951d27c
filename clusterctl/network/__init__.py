"""The cluster network: pure planning shared by the overlay, routed and weave drivers."""
