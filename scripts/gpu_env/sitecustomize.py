"""Run at start-up by every Python process that has this folder on PYTHONPATH (the gpu-check
dry run): only the GPU machine's packages can be imported (gpu_machine_packages.py says how)."""

import gpu_machine_packages

gpu_machine_packages.install()
