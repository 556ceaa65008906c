"""What both runner scripts share (stdlib only: imported beside them in the tool's environment, as the script's
folder leads sys.path): the skip exit code and how a result file ends a run."""

import json
import sys
from pathlib import Path

SKIP = 3  # train.eval.hooks.SKIP_EXIT_CODE: the tool or its weights are missing in this environment


def finish(path, code, status, **fields):
    """Writes the result file {"status", **fields} at `path` and exits with `code`."""
    Path(path).write_text(json.dumps({"status": status, **fields}, indent=1))
    sys.exit(code)
