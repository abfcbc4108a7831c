"""medpipe's Airflow layer shared by the DAGs and the UI plugin.

- `settings`: deployment settings from the environment (defaults work from a fresh clone), the champion Asset.
- `operators`: PublishModelOperator and its "Model page" extra link.
- `catalog`, `pages`, `app`: the Models page (a FastAPI app mounted by `medpipe_registry_plugin.py`).
- `runs_view` (+ `trend_chart`), `compare_view` (+ `metric_views`): the Runs view over the run records and the
  compare page of two versions, routes of the same app.

Airflow puts the plugins folder on sys.path, so DAG files import this package as `medpipe_plugin`;
`plugins/.airflowignore` keeps the plugin loader from also importing its files as top-level modules.
"""
