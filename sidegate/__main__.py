import sys

from sidegate.cli import main

sys.exit(main())
