"""Images built in pure Python as deterministic docker-archive tarballs: no Docker engine, no registry."""
