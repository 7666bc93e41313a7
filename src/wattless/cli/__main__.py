"""python -m wattless.cli"""

from wattless.cli import main

main()
