"""Prefect orchestration of the DVC pipeline, and the `exsearch` command line.

Importing this package turns telemetry off for everything it starts (Prefect, MLflow, DVC),
unless the user set these variables: nothing may call out to the internet.
"""

import os

for _name, _value in {
    "DO_NOT_TRACK": "true",  # Prefect client analytics and MLflow telemetry
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
}.items():
    os.environ.setdefault(_name, _value)
