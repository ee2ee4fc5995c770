"""What every run shares: the training engine, data, checkpoints, distributed set-up, logging
(log.txt and TensorBoard), configs, the command line and atomic file writes."""
