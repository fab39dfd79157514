import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
# The keylockd harness of the client tests.
sys.path.insert(0, os.path.join(REPO, "client", "python", "tests"))
