"""pdsim's torch micro-benchmarks: measure op latencies on a CUDA, ROCm or CPU device and write a
pdsim profile (``pdsim.profiles.format``). Imports torch; the simulator core never imports this package.
"""
