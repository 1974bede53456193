"""
The server's metrics (docs/metrics.md); a cluster node's own gauges are
L{twisted_chat.server.cluster.metrics}.

  - L{counters}: the Prometheus counters and collector;
  - L{histogram}: the histograms they export, observed without loading
    prometheus_client;
  - L{metricsport}: the metrics port (C{--metrics}) that serves them, and
    its limits.
"""
