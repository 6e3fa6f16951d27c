"""The filebox: shared runtime binaries and their ldd closure, in one volume-container image."""
