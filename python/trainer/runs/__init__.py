"""Runs: training one, the work queue, heartbeats, where examples come from, predicting with a version."""
