"""Serving: the cascade behind Ray Serve (the only package of the project that imports ray).

config.py (ServeConfig) · runview.py (one component from a run folder) · components.py (the plain
per-stage components) · service.py (the ingress logic, plain async) · routes.py (FastAPI app) ·
deployments.py + app.py (Ray Serve) · ab.py, abreport.py, replay.py (online A/B) ·
eventlog.py (served-list and feedback logs) · metrics.py (Prometheus).
"""
