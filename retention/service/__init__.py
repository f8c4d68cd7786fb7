"""``retention serve``: the daemon, its HTTP endpoints and its Prometheus metrics."""
