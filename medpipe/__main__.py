import sys

from medpipe.cli import main

sys.exit(main())
