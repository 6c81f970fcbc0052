"""The shared CNN, CIFAR-10 data and training loop. Knows nothing about benchmarking."""
