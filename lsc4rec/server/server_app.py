"""The Flower ServerApp: composes the experiment config from the run config and runs the federated loop.

``flwr run .`` uses the defaults in ``pyproject.toml`` ``[tool.flwr.app.config]``; ``--run-config`` overrides
any of them (see :func:`lsc4rec.config.overrides_from_run_config` for how a key maps to ``conf/``). Outputs go
to ``<output-dir>/<run_name>``: ``output-dir`` from the run config, else ``$LSC4REC_OUTPUT_DIR``, else the
config's ``output_dir`` relative to the ServerApp's working directory.
"""

from __future__ import annotations

import logging

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from lsc4rec.reporting import run_folder
from lsc4rec.server.federated_run import run_and_report
from lsc4rec.settings import federated_settings_from_run_config

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federated training of the configured SRM and print the ``RESULT`` line."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lsc4rec").setLevel(logging.INFO)
    run = federated_settings_from_run_config(context.run_config)
    run_and_report(grid, run, run_folder(context.run_config, run.output_dir, run.run_name))
