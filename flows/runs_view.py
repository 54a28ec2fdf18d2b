"""The runs-table view `exsearch ui` opens on: one row per scored checkpoint, its F1 in front.

MLflow's runs table shows no metric column until the user picks some (a campaign logs ~370), so
comparing checkpoints took three manual steps. The UI can restore a view shared by link: the
URL's `viewStateShareKey=<key>` makes it read the experiment tag `mlflow.sharedViewState.<key>`,
a JSON object of the table's search facets and UI state (MLflow's "Share" button writes the same
tag). `save_view` writes that tag with the view below, so the link `exsearch ui` prints opens
the table already filtered to the evaluate runs (one per checkpoint and campaign), sorted by
name, with the agent's F1, EM, support recall, searches per question and F1 against one-shot
RAG as columns. Clearing the filter shows every campaign and its nested stages.

The tag is rewritten on every `exsearch ui`, so a changed view reaches an existing store.
"""

from __future__ import annotations

import json
from typing import Any

# What the MLflow 3 UI reads: the tag prefix and the URL parameter naming the shared view.
SHARED_VIEW_TAG = "mlflow.sharedViewState."
SHARE_KEY_PARAM = "viewStateShareKey"
VIEW_KEY = "exsearch-checkpoints"

# The evaluate stage's metrics (exsearch.evaluation, logged by stages.evaluate), agent method:
# the measures docs/study.md compares checkpoints by.
COLUMNS: tuple[str, ...] = (
    "overall/f1",
    "overall/em",
    "overall/support_recall",
    "overall/searches_per_question",
    "agent_vs_rag/f1/diff",
)
EVALUATE_FILTER = "tags.stage = 'evaluate'"


def column_key(metric: str) -> str:
    """The UI's key of a metric column (its canonical sort key: metrics.`name`)."""
    return f"metrics.`{metric}`"


def view_state(columns: tuple[str, ...] = COLUMNS) -> dict[str, Any]:
    """The shared view: evaluate runs only, by run name, with `columns` shown."""
    return {
        "searchFilter": EVALUATE_FILTER,
        "orderByKey": "tags.`mlflow.runName`",  # base/…, iter_0/…, iter_1/…: checkpoint order
        "orderByAsc": True,
        "selectedColumns": [column_key(c) for c in columns],
        "columnOrder": [column_key(c) for c in columns],
        "runListHidden": False,
        "viewMaximized": False,
    }


def save_view(client: Any, experiment_id: str, key: str = VIEW_KEY) -> str:
    """Write the view as the experiment's shared-view tag; return its key."""
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, json.dumps(view_state()))
    return key


def view_url(base: str, experiment_id: str, key: str = VIEW_KEY) -> str:
    """The UI address of the experiment's runs table opened on the shared view `key`.

    `workflowType=machine_learning`: MLflow 3's UI otherwise opens an experiment on the GenAI
    overview (traces), whatever its `mlflow.experimentKind` tag says. The `/runs` page, not the
    experiment's root: only the runs page reads the shared view (checked in a browser,
    tests/test_ui_browser.py).
    """
    query = f"workflowType=machine_learning&{SHARE_KEY_PARAM}={key}"
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"
