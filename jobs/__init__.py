"""Admin processes (factor XII): one-off jobs that ship in the service's image and run with its
settings and store code. `python -m jobs --help` lists them."""
