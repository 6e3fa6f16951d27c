"""Image shipping without a registry: archives streamed over SSH (or fetched from a relay host)
into `docker load`, carrying only the layers a host lacks, judged by what the engine then holds.

- store.py: how a host's image store names and holds images (a Protocol; one module a variant:
  classic.py for the graph-driver store, containerd.py for the containerd image store).
- stream.py: which images a host lacks, the archive stream for them, and the load command that
  checks its own result.
- relay.py: the first host that lacks a big image serves it to the others.
"""
