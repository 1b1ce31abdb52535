"""Speed and learning benchmarks: scripts that print figures (`python benchmarks/<name>.py --help`)."""
