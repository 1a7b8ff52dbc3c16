"""`python -m boxinst_serve.cli ...` is `boxinst ...`."""
import sys

from boxinst_serve.cli import main

sys.exit(main())
