"""Alert rule evaluation on the agent's in-memory metric history."""
