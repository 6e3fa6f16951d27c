from clusterctl.cli import run

run()
