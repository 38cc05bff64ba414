"""The training loop and what it is made of: checkpoints, data order, optimiser and EMA."""
