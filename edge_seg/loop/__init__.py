"""The on-device loop: capture and inference threads, sinks, the runner that builds it, stats, tiling, metrics."""
