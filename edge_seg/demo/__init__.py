"""The demo: synthetic scenes and clips with ground truth, the demo run and a throw-away local broker."""
