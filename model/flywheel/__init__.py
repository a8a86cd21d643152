"""The flywheel: trajectories from annotations, export, LoRA fine-tuning, the gate, the version registry,
and the job that ties them."""
