"""What every recipe trains with: the trial context (reports, checkpoints, the Accelerator), datasets, and the
speed keys shared by every train section."""
