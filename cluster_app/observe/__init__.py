"""Observability: the fleet on the Dask dashboard, in JSON and in Prometheus.

- ``events.py``      the structured events our parts send to the scheduler (plain data)
- ``table.py``       the columnar agents table and histograms the monitor keeps
- ``monitor.py``     ``FleetMonitor``: the scheduler plugin that keeps them; ``monitor_snapshot``
- ``prometheus.py``  ``cluster_app_*`` series on the scheduler's ``/metrics``
- ``routes.py``      ``/cluster-app/json/<view>.json`` on the scheduler's HTTP server
- ``dashboard.py``   the ``/cluster-app`` Bokeh page (registered on import)
- ``preload.py``     ``dask scheduler --preload cluster_app.observe.preload``

Importing this package imports none of them (the run loop only needs ``events``).
"""
