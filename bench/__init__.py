"""The benchmark harness: sweeps, timing, results, equivalence and reports. Uses `cnn`."""
