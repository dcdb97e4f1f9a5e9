"""The paper's MNIST experiment: data, training, run files, sweeps, claims, plots."""
