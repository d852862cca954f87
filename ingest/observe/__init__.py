"""Watching a running capture: metrics, health and readiness, and the checks of ``capture doctor``.

* :mod:`~ingest.observe.histogram`: the latency histograms the code keeps
  (pure, no dependency; the log writer and the agent client import it);
* :mod:`~ingest.observe.collector`: the run's counters as Prometheus metric
  families, read at scrape time;
* :mod:`~ingest.observe.health`: what ``/healthz`` and ``/readyz`` answer (pure);
* :mod:`~ingest.observe.server`: the endpoint (aiohttp, on the run's event loop);
* :mod:`~ingest.observe.doctor`: the deployment checks.

Nothing is imported here, so that the log writer's import of the histogram
costs nothing else.

"""
