"""The top layer, above the flows: the `flywheel` command, the demo, its report and the traffic simulator."""
