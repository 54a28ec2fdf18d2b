"""How the campaign flow runs on a schedule or on a worker: `exsearch serve` and `exsearch deploy`.

Prefect has two kinds of deployment and they are not interchangeable:

- `serve`: the deployment runs inside the serving process, on this machine; nothing else can
  pick its runs up. The simplest schedule for one workstation.
- `deploy`: the deployment names a *work pool*; any `prefect worker start --pool <pool>` that can
  reach the Prefect server and sees the same project directory (a shared filesystem, or a clone
  at the same path) picks its runs up and runs the flow in a subprocess. That is what several
  machines, or a machine other than the one that schedules, need.

Both need a Prefect server (`PREFECT_API_URL`): Prefect's temporary server has no scheduler and
no worker can reach it. DVC locks the workspace, so runs are limited to one at a time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flows.campaign import check_overrides, em_campaign
from flows.dag import project_root

# The checkout that holds this package: a worker loads the flow from here.
CODE_ROOT = Path(__file__).resolve().parents[1]
ENTRYPOINT = "flows/campaign.py:em_campaign"


def _require_server() -> None:
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():  # Prefect's temporary server runs no scheduler
        raise RuntimeError(
            "deployments need a Prefect server: run `prefect server start --host 127.0.0.1` "
            "and set PREFECT_API_URL=http://127.0.0.1:4200/api"
        )


def _settings(project_dir: str | None, extend: bool, overrides: list[str] | None) -> dict[str, Any]:
    """The flow parameters every run of a deployment gets, checked before anything is created."""
    check_overrides(list(overrides or []))
    root = str(project_root(project_dir or "."))
    return {"extend": extend, "overrides": list(overrides or []), "project_dir": root}


def _description(parameters: dict[str, Any]) -> str:
    more = ", one more iteration per run" if parameters["extend"] else ""
    return f"EM campaign in {parameters['project_dir']}{more}"


def serve(
    name: str = "em-campaign",
    cron: str | None = None,
    interval: float | None = None,
    extend: bool = False,
    overrides: list[str] | None = None,
    project_dir: str | None = None,
) -> None:
    """Serve a scheduled deployment of the campaign (blocks; Ctrl-C stops and pauses it).

    Each scheduled run extends the campaign by one EM iteration (`extend`) or reruns it (DVC
    skips what is up to date).
    """
    if (cron is None) == (interval is None):
        raise ValueError("give exactly one of cron or interval")
    _require_server()
    parameters = _settings(project_dir, extend, overrides)
    from prefect.types.entrypoint import EntrypointType

    em_campaign.serve(
        name=name,
        cron=cron,
        interval=interval,
        parameters=parameters,
        limit=1,
        tags=["exsearch"],
        description=_description(parameters),
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def ensure_process_pool(pool: str) -> bool:
    """Create work pool `pool` of type `process` unless it exists; True if it was created.

    An existing pool of another type is refused: its workers would need an image or a cluster.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            found = client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
            return True
    if found.type != "process":
        raise ValueError(
            f"work pool {pool!r} is of type {found.type!r}; exsearch deploys to a 'process' "
            "pool (the worker runs the flow in a subprocess beside the project): name another"
        )
    return False


def deploy(
    pool: str,
    name: str = "em-campaign",
    cron: str | None = None,
    interval: float | None = None,
    extend: bool = False,
    overrides: list[str] | None = None,
    project_dir: str | None = None,
) -> str:
    """Register a deployment of the campaign on work pool `pool`; returns its id. Does not block.

    The pool is created (type `process`) if missing. Without `cron` or `interval` the
    deployment has no schedule and runs when asked (`prefect deployment run
    em-campaign/<name>`, the UI, or the API). A worker started with `prefect worker start
    --pool <pool>` runs each flow run from this checkout, in `project_dir`.
    """
    if cron is not None and interval is not None:
        raise ValueError("give at most one of cron or interval")
    _require_server()
    parameters = _settings(project_dir, extend, overrides)
    ensure_process_pool(pool)
    flow = em_campaign.from_source(source=str(CODE_ROOT), entrypoint=ENTRYPOINT)
    deployment_id = flow.deploy(
        name=name,
        work_pool_name=pool,
        cron=cron,
        interval=interval,
        parameters=parameters,
        concurrency_limit=1,
        tags=["exsearch"],
        description=_description(parameters),
        build=False,
        push=False,
        print_next_steps=False,
    )
    return str(deployment_id)
