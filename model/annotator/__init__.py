"""The simulated human annotator: the next click toward a target mask, and whole click trajectories."""
