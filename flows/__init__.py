"""Prefect flows (installed as ``vidbatch.flows``): wiring and fan-out only."""
