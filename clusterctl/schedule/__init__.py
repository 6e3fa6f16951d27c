"""Where each service's replicas run: a pure function of the cluster file and what runs now."""
