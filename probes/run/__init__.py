"""What runs the probes: the runner that fills a run's probes/ folder (`probes.run.runner`, also
following a run in training), its command line (`python -m probes`, `probes.run.cli`), and Ray
fan-out (`probes.run.ray_runner`)."""
