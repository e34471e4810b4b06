"""What each process of a run is, from its title or command line: the benchmark's CPU table counts CPU-seconds by
these roles, and the CPU priority keeper lowers the priority of the helper roles below the engines'."""

from __future__ import annotations

OWN_ROLES = (
    ("EngineActor", "engine actors"),
    ("EngineFeeder", "engine feeders"),
    ("ChunkActor", "chunk actors"),
    ("ProgressBoard", "progress board"),
    ("_write", "write tasks"),
    ("_read", "read and plan tasks"),
    ("_split", "read and plan tasks"),
    ("_fates", "read and plan tasks"),
    ("_decide", "read and plan tasks"),
    ("_stored_ids", "read and plan tasks"),
)
"""This pipeline's own actors and tasks, by the names of their classes and functions in the Ray adapters (a test
checks that each still exists there)."""
RAY_ROLES = (
    ("_StatsActor", "Ray Data stats actor"),
    ("SplitCoordinator", "Ray Data coordinator actors"),
    ("AutoscalingRequester", "Ray Data coordinator actors"),
    ("HashShuffle", "plan shuffle"),
    ("Aggregator", "plan shuffle"),
    ("ActorLocationTracker", "Ray Data coordinator actors"),
    ("_AutoscalingCoordinatorActor", "Ray Data coordinator actors"),
    ("ray::IDLE", "idle Ray workers"),
    ("DashboardAgent", "dashboard agent"),
    ("RuntimeEnvAgent", "runtime-env agent"),
    ("gcs_server", "Ray GCS"),
    ("raylet", "raylet"),
    ("dashboard/agent.py", "dashboard agent"),
    ("runtime_env/agent", "runtime-env agent"),
    ("log_monitor", "log monitor"),
    ("dashboard/dashboard.py", "dashboard"),
    ("autoscaler/_private/monitor.py", "autoscaler monitor"),
    ("ray::", "other Ray workers"),
)
ROLES = (*RAY_ROLES[:5], *OWN_ROLES, *RAY_ROLES[5:])
"""Substring of a process's title or command line -> its role, first match wins (Ray names a worker after the
actor or task it runs, so a worker's role can change between samples)."""

HELPER_ROLES = frozenset(
    {
        "progress board",
        "engine feeders",
        "idle Ray workers",
        "write tasks",
        "Ray Data stats actor",
        "Ray Data coordinator actors",
        "plan shuffle",
        "read and plan tasks",
        "dashboard agent",
        "runtime-env agent",
        "Ray GCS",
        "log monitor",
        "dashboard",
        "autoscaler monitor",
    }
)
"""Roles that may run below the engines' priority once the engines are ready. Not the chunk actors: they feed the
engines. The engine feeders are: they wait on their engine, which holds the next batch already. Not the raylet: it
forks the workers, engines included, and a child starts at its parent's niceness. Idle workers are: an engine never
takes one over (its actor carries its own runtime environment, so Ray starts a worker for it), and they cost the
engines as much as any helper (0.3-0.7 CPU-seconds per steady window on 2 cores). Not unnamed workers."""


def role_of(command: str, pid: int, driver_pid: int) -> str:
    if pid == driver_pid:
        return "driver"
    for needle, role in ROLES:
        if needle in command:
            return role
    return "other processes"
