"""System and Python package updates: package managers, policy, and the node runbook."""
