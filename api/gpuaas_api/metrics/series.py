"""What a metric series is made of: the readings of each pool GPU, and the buckets they roll up into."""
from __future__ import annotations

# What the collector reads from each pool GPU (gpu_info's metrics), in every series and rollup.
GPU_METRICS = ("utilization_gpu_percent", "memory_used_mb", "temperature_c", "power_w")
# Metric buckets, with the short aliases clients send. Buckets are aligned in UTC; a week starts on
# Monday (the epoch was a Thursday, hence the 4-day offset).
TIME_GROUPINGS = {"minute": 60, "hour": 3600, "day": 86400, "week": 604800}
TIME_GROUPING_ALIASES = {"1m": "minute", "1h": "hour", "1d": "day", "1w": "week"}
BUCKET_OFFSET_SECONDS = {604800: 4 * 86400}
