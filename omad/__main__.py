import sys

from omad.cli import main

sys.exit(main())
