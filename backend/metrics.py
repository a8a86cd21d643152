"""Prometheus metrics: requests, latencies, errors, predictions, webhook events, training jobs, and the
caches."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

disable_created_metrics()  # the *_created series only add noise to a scrape


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("segagent_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("segagent_request_seconds", "Time to answer a request", ["route"],
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=self.registry)
        self.errors = Counter("segagent_errors", "Requests answered with an error", ["route", "kind"],
                              registry=self.registry)
        self.predictions = Counter("segagent_predictions", "Regions predicted", ["mode"], registry=self.registry)
        self.events = Counter("segagent_webhook_events", "Webhook events received", ["action"],
                              registry=self.registry)
        self.training_jobs = Counter("segagent_training_jobs", "Training jobs queued, by what asked for them",
                                     ["trigger"], registry=self.registry)

    def watch_caches(self, caches: dict) -> None:
        """Report hits, misses and size of objects with .hits/.misses (and optionally .size_bytes)."""
        self.registry.register(_CacheCollector(caches))


class _CacheCollector:
    def __init__(self, caches: dict):
        self.caches = caches

    def collect(self):
        hits = CounterMetricFamily("segagent_cache_hits", "Cache hits", labels=["cache"])
        misses = CounterMetricFamily("segagent_cache_misses", "Cache misses", labels=["cache"])
        size = GaugeMetricFamily("segagent_cache_bytes", "Bytes held by a cache", labels=["cache"])
        for name, cache in self.caches.items():
            hits.add_metric([name], cache.hits)
            misses.add_metric([name], cache.misses)
            if hasattr(cache, "size_bytes"):
                size.add_metric([name], cache.size_bytes)
        yield hits
        yield misses
        yield size
