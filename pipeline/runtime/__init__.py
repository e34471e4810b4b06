"""What runs around the stages: CPU priority of the helper processes, process roles, progress and its display."""
