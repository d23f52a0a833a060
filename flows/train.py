"""`python -m flows.train [--params params.yaml] [--set key.path=value ...]`: one run of the `train-ensemble`
flow (flows/train_ensemble.py), printed as JSON.

With no Prefect server configured, `main` starts Prefect's embedded server first and only then imports the
flow (Prefect, the stages, the models), so that the server's start-up overlaps those imports instead of
following them (flows/embedded_server.py); it waits for the server before the run. This module itself stays
light for that reason: what it imports at its top does not import Prefect.
"""

from __future__ import annotations

import argparse
import json
import sys

from flows.embedded_server import EmbeddedServer
from foldstack.config import DEFAULT_PARAMS_FILE
from foldstack.errors import FoldstackError
from foldstack.runtime.process_exit import skip_final_garbage_collection

DESCRIPTION = ("Train the stacked ensemble of params.yaml (overrides: `key.path=value`); returns the bundle and "
               "metrics.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.train", description=DESCRIPTION)
    parser.add_argument("--params", "-p", default=DEFAULT_PARAMS_FILE, help="the params file")
    parser.add_argument("--set", "-s", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override a key (repeatable)")
    args = parser.parse_args(argv)  # --help exits here, before any server starts
    # Before Prefect is imported: it reads PREFECT_API_URL, which points at this server, once, at import.
    server = EmbeddedServer.start_if_unconfigured()
    from flows.train_ensemble import train_ensemble  # deferred: prefect (imported while the server starts)

    skip_final_garbage_collection()
    try:
        if server is not None:
            server.wait_until_ready()
        result = train_ensemble(params=args.params, overrides=args.overrides)
    except FoldstackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
