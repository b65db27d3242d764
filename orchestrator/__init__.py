"""orch: plan, submit and resume detector fine-tuning on SLURM. Never imports torch."""
