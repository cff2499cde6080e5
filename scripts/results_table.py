"""Print the README's results table from exported/manifest.json and exported/parity.json."""

import sys
from pathlib import Path

from pipeline.report import release_table

print(release_table(Path(sys.argv[1] if len(sys.argv) > 1 else "exported/manifest.json")))
