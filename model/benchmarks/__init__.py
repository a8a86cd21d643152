"""Benchmarks: clicks to an IoU for the tools, episodes for the agent, the corruption protocol for quality."""
