"""Wiring: the Faust worker, sinks, metrics, local services and the CLI.

Nothing here computes a KPI; that is scoring/'s job.
"""
