"""What runs on the cluster: the training job (imports torch)."""
