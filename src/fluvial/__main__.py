import sys

from fluvial.cli import main

sys.exit(main())
