"""Pool GPU and storage metrics: the collector, the stored samples and rollups, the Prometheus exposition."""
