import sys

from .cli import main

if __name__ == "__main__":  # importing the module (as the layout test does) must not run the CLI
    sys.exit(main())
